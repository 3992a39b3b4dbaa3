"""``configs/<method>.py:avsbench``: the paper setting, a clear error without the data, and an
end-to-end run on an AVSBench-layout tree written by the tests (``avsbench,runlocal``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from data_pipelines import synth_avs
from jax_cavs.problems.cavs import config as config_base
from jax_cavs.problems.cavs import scenarios

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "jax_cavs.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_avsbench_argument_sets_the_paper_setting():
    config = config_base.base_config("cmr", config_base.parse_arg("avsbench"))
    assert (config.dataset.name, config.dataset.image_size) == ("avsbench_semantic", 224)
    assert (config.scenario.split, config.model.backbone_depth) == ("60-10", 50)
    assert config.model.freeze_audio and config.model_init.resnet.endswith("resnet50-19c8e357.pth")
    assert (config.train.batch_size, config.train.epochs) == (8, 30)


def test_avsbench_defaults_to_the_papers_sequential_order():
    config = config_base.base_config("cmr", config_base.parse_arg("avsbench"))
    assert (config.scenario.mode, config.scenario.class_order) == ("disjoint", "sequential")
    # CMR Table 7: new classes = ids 61..70 (trombone..woman); Louvain would regroup them.
    sc = scenarios.build_scenario([[c] for c in range(1, 71)], [[1]], 71, config.scenario.split,
                                  mode=config.scenario.mode,
                                  class_order=config.scenario.class_order)
    assert [t.classes for t in sc.tasks] == [tuple(range(1, 61)), tuple(range(61, 71))]
    # SynthAVS keeps its default (empty: the mode's own, Louvain for disjoint).
    assert config_base.base_config("cmr", config_base.parse_arg("")).scenario.class_order == ()
    # The locked field takes a name or an explicit tuple.
    config.lock()
    config.scenario.class_order = "60-10a"
    config.scenario.class_order = tuple(range(70, 0, -1))
    assert config.scenario.class_order[0] == 70


def test_config_docstrings_state_the_incremental_learning_rate_they_get():
    """Each ``lr / N`` a config's docstring claims is the ratio that config really gets on
    SynthAVS or under ``:avsbench``, and the SynthAVS one is among them."""
    import importlib.util
    import re
    for method in ("lwf", "lwf_mc", "ilt", "mib", "plop"):
        spec = importlib.util.spec_from_file_location(method, os.path.join(ROOT, "configs",
                                                                           f"{method}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ratios = [round(c.optimizer.lr / c.optimizer.lr_incremental)
                  for c in (module.get_config(""), module.get_config("avsbench"))]
        claimed = {int(n) for n in re.findall(r"lr / (\d+)", module.__doc__)}
        assert ratios[0] in claimed and claimed <= set(ratios), (method, claimed, ratios)


def test_missing_avsbench_data_names_the_directory(tmp_path):
    workdir = tmp_path / "run"
    result = cli("--config", "configs/finetune.py:avsbench", "--workdir", str(workdir),
                 f"--config.dataset.data_dir={tmp_path / 'data'}")
    assert result.returncode != 0
    assert str(tmp_path / "data") in result.stderr and "manual" in result.stderr
    assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
def test_avsbench_runlocal_on_a_written_tree(tmp_path, avsbench_runlocal_data):
    workdir = tmp_path / "run"
    result = cli("--config", "configs/finetune.py:avsbench,runlocal", "--workdir", str(workdir),
                 f"--config.dataset.data_dir={avsbench_runlocal_data}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "metrics.json") as f:
        metrics = json.load(f)
    assert [t["task"] for t in metrics["tasks"]] == [0, 1]
    num_classes = synth_avs.SynthAVS.builder_configs["tiny"].num_classes
    assert len(metrics["tasks"][-1]["per_class_iou"]) == num_classes + 1
    # Validation is off by default: no history, no best model (the last epoch ends a task).
    assert all("validation" not in task for task in metrics["tasks"])
    assert not (workdir / "models" / "best_0").exists()
