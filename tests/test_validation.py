"""Validation every k epochs with best-checkpoint selection (core.validation, the loop)."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import validation

RECORD = {"miou": {"old": None, "new": 0.25, "all": 0.5}, "per_class_iou": [0.1, None]}


def test_metric_paths_name_the_field_and_the_valid_scores():
    assert validation.metric_value(RECORD, "miou.all") == 0.5
    assert validation.metric_value(RECORD, "miou.old") is None
    with pytest.raises(ValueError, match=r"train.select_metric='miou.al'.*valid: miou.old, "
                                         r"miou.new, miou.all"):
        validation.metric_value(RECORD, "miou.al")
    with pytest.raises(ValueError, match="names a list, not a score"):
        validation.metric_value(RECORD, "per_class_iou")


def test_validation_points_are_every_kth_epoch_and_the_last_step():
    # 3 steps per epoch, 7 epochs (21 steps), every 3rd epoch: epochs 3, 6 and the last (7).
    points = {step: validation.due(step, 3, 3, 21) for step in range(1, 22)}
    assert {s: e for s, e in points.items() if e} == {9: 3, 18: 6, 21: 7}


def test_the_best_is_the_highest_score_earliest_on_ties_undefined_lowest():
    history = {"metric": "miou.all", "scores": []}
    improved = [validation.record(history, epoch, value)
                for epoch, value in enumerate([None, 0.3, 0.5, 0.5, None, 0.4], start=1)]
    assert improved == [True, True, True, False, False, False]
    assert history["best"] == {"epoch": 3, "score": 0.5}
    assert [s["epoch"] for s in history["scores"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_avsbench_runlocal_keeps_the_best_validated_epoch(tmp_path, avsbench_runlocal_data):
    """On an AVSBench-layout tree with a 'val' split: every epoch is validated, the chosen
    epoch is the history's argmax, and the learner that ends the task (``models/task_t``,
    the next task's start) is bitwise the best one (``models/best_t``)."""
    from test_avsbench_config import cli  # pylint: disable=import-outside-toplevel

    workdir = tmp_path / "run"
    result = cli("--config", "configs/finetune.py:avsbench,runlocal", "--workdir", str(workdir),
                 f"--config.dataset.data_dir={avsbench_runlocal_data}", "--config.train.epochs=3",
                 "--config.train.validate_every=1", "--config.train.select_metric=miou.all")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "metrics.json") as f:
        metrics = json.load(f)
    for task in metrics["tasks"]:
        history = task["validation"]
        assert history["metric"] == "miou.all"
        scores = [s["score"] for s in history["scores"]]
        assert [s["epoch"] for s in history["scores"]] == [1, 2, 3]
        best = int(np.argmax([-math.inf if s is None else s for s in scores]))
        assert history["best"] == {"epoch": best + 1, "score": scores[best]}
        assert f"epoch {best + 1} selected" in result.stderr
        t = task["task"]
        paths = [ckpt_lib.task_model_path(str(workdir), t, kind) for kind in ("task", "best")]
        with ocp.StandardCheckpointer() as checkpointer:
            chosen, kept = (checkpointer.restore(p) for p in paths)
        jax.tree_util.tree_map(np.testing.assert_array_equal, chosen, kept)


def test_validation_without_validation_records_is_refused(tmp_path, tiny_data_dir):
    from test_avsbench_config import cli  # pylint: disable=import-outside-toplevel

    result = cli("--config", "configs/finetune.py:runlocal", "--workdir", str(tmp_path / "r"),
                 f"--config.dataset.data_dir={tiny_data_dir}", "--config.train.validate_every=1")
    assert result.returncode == 2
    assert "train.validate_every=1" in result.stderr and "'val' split" in result.stderr
