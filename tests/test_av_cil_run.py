"""AV-CIL through the command line: the embedded data end to end with a SIGKILL resume that
ends bitwise equal to an uninterrupted run, and the authors' released layout (a tree the test
writes itself) read by ``--config configs/av_cil.py:ks --config.dataset.data_dir=DIR``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from test_av_cil_release import write_release
from test_resume import final_params, run_until

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(config: str, workdir: str, data_dir: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "jax_cavs.main", "--config", config, "--workdir", workdir,
            f"--config.dataset.data_dir={data_dir}", *flags]


def load(path: str):
    with open(path) as f:
        return json.load(f)


def test_av_cil_runs_and_resumes_bitwise_after_sigkill(tmp_path):
    data = str(tmp_path / "data")
    # runlocal: 2 tasks of 4 classes, 80 clips a task, 32 + 16 per batch -> 2 steps an epoch,
    # 3 epochs; the second task replays the exemplar memory chosen after the first.
    flags = ("--config.train.checkpoint_every=2",)
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    run_until(cli("configs/av_cil.py:runlocal", reference, data, *flags), None)
    run_until(cli("configs/av_cil.py:runlocal", resumed, data, *flags),
              r"\(task 1/2, training step 2 of ")
    run_until(cli("configs/av_cil.py:runlocal", resumed, data, *flags),
              r"\(task 2/2, training step 4 of ")
    assert "Resuming" in run_until(cli("configs/av_cil.py:runlocal", resumed, data, *flags),
                                   None)
    with open(os.path.join(reference, "metrics.json"), "rb") as f:
        expected = f.read()
    with open(os.path.join(resumed, "metrics.json"), "rb") as f:
        assert f.read() == expected
    jax.tree_util.tree_map(np.testing.assert_array_equal, final_params(resumed),
                           final_params(reference))

    metrics = json.loads(expected)
    assert metrics["problem"] == "av_cil" and metrics["method"] == "av_cil"
    tasks = metrics["tasks"]
    # The paper's summary from the records: eq 15 and, with two tasks, F_2 = a_{1,1} - a_{2,1}.
    assert metrics["summary"]["mean_accuracy"] == pytest.approx(
        np.mean([t["acc"]["all"] for t in tasks]))
    assert metrics["summary"]["average_forgetting"] == pytest.approx(
        tasks[0]["task_acc"][0] - tasks[1]["task_acc"][0])
    assert metrics["accuracy_matrix"] == [t["task_acc"] for t in tasks]
    # Every epoch validated on the seen classes' val clips, the best one kept.
    assert all(len(t["validation"]["scores"]) == 3 for t in tasks)
    assert os.path.exists(os.path.join(reference, "report", "task_accuracy.png"))


def test_released_layout_runs_through_the_command_line(tmp_path):
    data, _, _ = write_release(str(tmp_path / "release"), folder="kinetics-sounds", h5=True)
    workdir = str(tmp_path / "run")
    result = subprocess.run(
        cli("configs/av_cil.py:ks,runlocal", workdir, data,
            "--config.scenario.classes_per_task=2", "--config.model.num_frames=2",
            "--config.train.epochs=1"),
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = load(os.path.join(workdir, "metrics.json"))
    assert len(metrics["tasks"]) == 2 and metrics["tasks"][1]["classes"] == [2, 3]
    # The fixture's test split: 1 + 1 clips of the first task, 1 + 2 of the second.
    assert metrics["summary"]["num_tasks"] == 2
    missing = subprocess.run(cli("configs/av_cil.py:ave,runlocal", workdir + "_ave", data),
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert "AVE" in last and "wiberg/AV-CIL_features" in last, missing.stderr[-2000:]
