"""Every ``configs/<method>.py`` runs the whole continual experiment end to end with
``runlocal``, and a run can reuse another run's trained first task (``first_task_from``).

The methods whose first task is plain cross-entropy reuse the first task of one fine-tuning
run, as ``benchmarks/compare_methods.py`` does; the reuse is checked to be exact: their
task-0 evaluation is the source's, bit for bit, and a method reusing the first task ends where
the same method training it ends.
"""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from jax_cavs import experiment
from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import guards
from jax_cavs.problems.cavs import strategies

pytestmark = pytest.mark.slow

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")
METHODS = sorted(name[:-3] for name in os.listdir(CONFIG_DIR)
                 if name.endswith(".py") and not name.startswith("av_cil"))  # CAVS configs


def method_config(name: str, data_dir: str, arg: str = "runlocal"):
    """``configs/<name>.py:<arg>`` on ``data_dir``, one epoch per task (what these tests check
    is that every part of a method runs and composes, not how well it learns)."""
    spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                  os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.dataset.data_dir = data_dir
    config.train.epochs = 1
    return config


def run(config, workdir) -> dict:
    with experiment.create(config, str(workdir)) as exp:  # closes its checkpointer
        exp.run()
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def reuses(name: str) -> bool:
    return strategies.strategy_class(method_config(name, "").strategy.name
                                     ).first_task_objective == "ce"


@pytest.fixture(scope="module")
def first_task(tmp_path_factory, tiny_data_dir):
    """(workdir, metrics) of the fine-tuning run whose first task the other methods reuse."""
    workdir = tmp_path_factory.mktemp("finetune")
    return str(workdir), run(method_config("finetune", tiny_data_dir), workdir)


def cavs_strategies() -> set[str]:
    """The strategies CAVS runs: cl's and the CAVS problem's own (other problems' strategies
    share the registry once their modules are imported in the same process)."""
    homes = ("jax_cavs.cl.", "jax_cavs.problems.cavs.")
    return {name for name in strategies.available()
            if strategies.strategy_class(name).__module__.startswith(homes)}


def test_every_method_has_a_config():
    assert set(METHODS) == cavs_strategies(), "one configs/<name>.py per strategy"


@pytest.fixture(scope="module")
def method_runs(first_task, tmp_path_factory, tiny_data_dir):
    """name -> (workdir, metrics) of ``configs/<name>.py:runlocal``, run on first use (the
    methods whose first task is cross-entropy reuse ``first_task``'s)."""
    runs = {}

    def get(name: str):
        if name not in runs:
            config = method_config(name, tiny_data_dir)
            if reuses(name):
                config.first_task_from = first_task[0]
            workdir = tmp_path_factory.mktemp(name)
            runs[name] = (str(workdir), run(config, workdir))
        return runs[name]
    return get


# The reuse test below takes the EWC run of the end-to-end test: one xdist worker runs both
# (README's ``--dist loadgroup``).
@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.xdist_group("ewc"))
                                  if m == "ewc" else m for m in METHODS if m != "finetune"])
def test_every_config_runs_end_to_end_with_runlocal(name, first_task, method_runs,
                                                    tiny_data_dir):
    source, source_metrics = first_task
    config = method_config(name, tiny_data_dir)
    workdir, metrics = method_runs(name)
    num_tasks = 1 if config.strategy.name == "joint" else 2
    assert metrics["method"] == config.strategy.name
    assert [t["task"] for t in metrics["tasks"]] == list(range(num_tasks))
    for t in range(num_tasks):
        assert os.path.isdir(ckpt_lib.task_model_path(workdir, t))
        assert all(0.0 <= v <= 1.0 for v in metrics["tasks"][t]["miou"].values()
                   if v is not None)
    if num_tasks == 2:
        assert set(metrics["summary"]) >= {"average_accuracy", "forgetting", "bwt"}
    if reuses(name):
        # The source's trained first task, evaluated by the same program: identical scores.
        assert metrics["tasks"][0] == source_metrics["tasks"][0]


@pytest.mark.xdist_group("ewc")
def test_reusing_the_first_task_ends_where_training_it_ends(method_runs, tmp_path,
                                                            tiny_data_dir):
    """EWC's first task is fine-tuning's (zero penalty, importance computed in end_task):
    reusing fine-tuning's first task (the end-to-end test's EWC run) gives EWC's own run, to
    float32 reduction order."""
    assert reuses("ewc")
    trained = run(method_config("ewc", tiny_data_dir), tmp_path / "trained")
    reused = method_runs("ewc")[1]
    assert [t["task"] for t in reused["tasks"]] == [0, 1]
    # Same data, same initial parameters, the same gradients: the runs agree to float32
    # round-off (the two programs may fuse the loss differently).
    eps = float(np.finfo(np.float32).eps)
    for want, got in zip(trained["tasks"], reused["tasks"]):
        for key, value in want["miou"].items():
            assert (value is None) == (got["miou"][key] is None)
            if value is not None:
                assert got["miou"][key] == pytest.approx(value, abs=1e3 * eps), key


def test_mismatching_sources_are_refused(first_task, tiny_data_dir, tmp_path):
    source = first_task[0]
    lwf_mc = method_config("lwf_mc", tiny_data_dir)
    with pytest.raises(ValueError, match="first-task objective: 'finetune' trains it with "
                                         "'ce', 'lwf_mc' with 'bce'"):
        guards.check_first_task_source(source, lwf_mc, strategies.get_strategy("lwf_mc"))
    si = method_config("si", tiny_data_dir)
    with pytest.raises(ValueError, match="strategy 'si' cannot reuse a first task"):
        guards.check_first_task_source(source, si, strategies.get_strategy("si"))
    other_lr = method_config("mib", tiny_data_dir)
    other_lr.optimizer.lr = 0.5
    with pytest.raises(ValueError, match=r"optimizer\.lr: 0\.001 -> 0\.5"):
        guards.check_first_task_source(source, other_lr, strategies.get_strategy("mib"))
    # Only the first task matters: the later tasks' rate may differ.
    other_lr.optimizer.lr = 1e-3
    other_lr.optimizer.lr_incremental = 0.5
    guards.check_first_task_source(source, other_lr, strategies.get_strategy("mib"))
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        guards.check_first_task_source(str(tmp_path), other_lr,
                                       strategies.get_strategy("mib"))


def test_task_models_hold_the_learner_and_reject_other_models(first_task, tmp_path):
    source = first_task[0]
    checkpointer = ckpt_lib.Checkpointer(source)
    final = checkpointer.restore_raw()["state"]
    checkpointer.close()
    # After the last task the rolling checkpoint's learner is the last task's model.
    params, batch_stats = ckpt_lib.load_task_model(source, 1, final["params"],
                                                   final["batch_stats"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, final["params"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, batch_stats, final["batch_stats"])
    wrong = jax.tree_util.tree_map(lambda x: np.zeros((*np.shape(x), 2), np.float32),
                                   final["params"])
    with pytest.raises(ckpt_lib.CorruptCheckpoint, match="same model config"):
        ckpt_lib.load_task_model(source, 1, wrong, final["batch_stats"])
    with pytest.raises(FileNotFoundError, match="has not finished training task 1 "):
        ckpt_lib.load_task_model(str(tmp_path), 0, final["params"], final["batch_stats"])
