"""Bad input gives one clear error naming the culprit, a non-zero exit and no partial outputs.

Data-level cases (missing / truncated wav, undecodable image, colour outside the palette,
frame / mask size mismatch, metadata row without folder) are in ``test_avsbench.py``; split
strings and empty tasks in ``test_scenarios.py``; weight files in ``test_weights.py``. This
file covers the command line, checkpoints and the NaN guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import guards
from jax_cavs.core.state import create_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jax_cavs.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_unknown_strategy_lists_the_valid_ones(tmp_path, tiny_data_dir):
    workdir = tmp_path / "run"
    result = run_cli("--config", "configs/finetune.py:runlocal", "--workdir", str(workdir),
                     f"--config.dataset.data_dir={tiny_data_dir}", "--config.strategy.name=plob")
    assert result.returncode != 0
    assert "strategy.name='plob'" in result.stderr and "plop" in result.stderr
    assert not workdir.exists()


def test_misspelt_config_field_is_an_error(tmp_path):
    result = run_cli("--config", "configs/finetune.py:runlocal", "--workdir", str(tmp_path),
                     "--config.trian.epochs=3")
    assert result.returncode != 0 and "trian" in result.stderr


def test_unknown_config_argument_lists_the_valid_ones(tmp_path):
    result = run_cli("--config", "configs/finetune.py:runlokal", "--workdir", str(tmp_path))
    assert result.returncode != 0
    assert "runlokal" in result.stderr and "runlocal" in result.stderr


def test_split_that_does_not_fit_names_the_field(tmp_path, tiny_data_dir):
    workdir = tmp_path / "run"
    result = run_cli("--config", "configs/finetune.py:runlocal", "--workdir", str(workdir),
                     f"--config.dataset.data_dir={tiny_data_dir}", "--config.scenario.split=5-2")
    assert result.returncode == 2 and "scenario.split='5-2'" in result.stderr
    assert not workdir.exists()


def tiny_state():
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    return create_state({"params": params}, optax.adam(1e-3), num_classes=4, memory_capacity=2,
                        use_importance=False, extras={})


def test_corrupted_checkpoint_names_the_directory(tmp_path):
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    state = tiny_state()
    checkpointer.save(1, state, {"task": 0}, {})
    restored, meta, _, aux = checkpointer.restore(state)
    np.testing.assert_array_equal(restored.params["dense"]["kernel"],
                                  state.params["dense"]["kernel"])
    assert meta == {"task": 0}
    assert aux == {}
    step_dir = tmp_path / "checkpoints" / "1" / "state"
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(ckpt_lib.CorruptCheckpoint, match=str(tmp_path / "checkpoints" / "1")):
        checkpointer.restore(state)


def test_nonfinite_guard_names_step_task_and_term():
    guard = guards.NonFiniteGuard(task=2, desc="train")  # 0-based task 2, steps 0..5: read 1-based
    for step in range(6):
        bad = step >= 3
        guard.update(step, {"ce": jnp.asarray(1.0),
                            "pod": jnp.asarray(np.nan if bad else 0.5),
                            "loss": jnp.asarray(np.inf if bad else 1.5)})
    with pytest.raises(guards.NonFiniteLoss, match=r"task 3 \(train\) at step 4 .*pod, loss"):
        guard.check()


def test_config_mismatch_lists_the_fields(tmp_path):
    from jax_cavs.problems.cavs import config as config_base

    config = config_base.base_config("finetune", config_base.parse_arg("runlocal", runlocal=False))
    with open(tmp_path / "config.json", "w") as f:  # as the loop writes it
        json.dump(json.loads(config.to_json()), f)
    changed = config.copy_and_resolve_references()
    changed.train.epochs = 7
    with pytest.raises(guards.ConfigMismatch, match=r"train\.epochs: 2 -> 7"):
        guards.check_workdir_config(str(tmp_path), changed, allow_change=False)
    guards.check_workdir_config(str(tmp_path), changed, allow_change=True)


@pytest.mark.slow
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data_dir):
    """Task 0 trains normally; task 1 is given an absurd learning rate and diverges."""
    workdir = tmp_path / "run"
    args = ["--config", "configs/finetune.py:runlocal", "--workdir", str(workdir),
            f"--config.dataset.data_dir={tiny_data_dir}", "--config.optimizer.grad_clip=0",
            "--config.optimizer.lr_incremental=1e30"]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "non-finite loss in task 2 (train) at step" in result.stderr
    with open(workdir / "metrics.json") as f:
        metrics = json.load(f)
    assert [t["task"] for t in metrics["tasks"]] == [0]
    checkpointer = ckpt_lib.Checkpointer(str(workdir))
    raw = checkpointer.restore_raw()
    assert raw["meta"]["task"] == 1 and raw["meta"]["phase"] == "start"
    leaves = jax.tree_util.tree_leaves(raw["state"]["params"])
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
