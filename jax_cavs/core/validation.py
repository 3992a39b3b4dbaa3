"""Evaluation during a task's training: validation with best-checkpoint selection, and the
scenario's eval points (task-free protocols: test-split scores at fixed steps of the stream,
``tasks[t].eval_points`` in metrics.json).

With ``config.train.validate_every = k > 0`` the loop scores the learner on the task's
validation records (``TaskSpec.val_indices`` of the scenario's ``val_split``) after every k-th
epoch and after the last one, with the problem's evaluator over the classes seen so far. The
metric ``config.train.select_metric`` is a dotted path into the evaluator's record (CAVS:
``"miou.all"``, ``"miou.new"``); the best (highest; ties keep the earlier epoch) learner is
written to ``models/best_<t>`` and becomes the learner at the end of the task, the one the
next task starts from and that the test split scores. The history rides in the checkpoint
meta, so a killed run resumes with it, and ends in ``metrics.json`` (``tasks[t].validation``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def check_scenario(config, scenario) -> None:
    """Refuses validation without validation records, and eval points outside the tasks."""
    every = config.train.get("validate_every", 0)
    if every and not all(len(task.val_indices) for task in scenario.tasks):
        raise ValueError(f"config field train.validate_every={every}, but scenario "
                         f"{scenario.name} has tasks without validation records (the dataset "
                         f"has no {scenario.val_split!r} split); set it to 0.")
    for task, step in scenario.eval_points:
        if not 0 <= task < len(scenario.tasks) or step < 1:
            raise ValueError(f"scenario {scenario.name}: eval point (task {task}, step {step}) "
                             f"is not a step >= 1 of one of its {len(scenario.tasks)} tasks.")


def metric_value(record: Mapping[str, Any], path: str) -> float | None:
    """``record["miou"]["all"]`` for ``path = "miou.all"``; None where the evaluator leaves
    the score undefined. An unknown path names the config field and the valid paths."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ValueError(f"config field train.select_metric={path!r} is not a score of "
                             f"the evaluator; valid: {', '.join(score_paths(record))}.")
        value = value[part]
    if value is not None and not isinstance(value, (int, float)):
        raise ValueError(f"config field train.select_metric={path!r} names a "
                         f"{type(value).__name__}, not a score; valid: "
                         f"{', '.join(score_paths(record))}.")
    return None if value is None else float(value)


def score_paths(record: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths of the scalar (or undefined) scores in ``record``."""
    paths = []
    for key, value in record.items():
        if isinstance(value, Mapping):
            paths += score_paths(value, f"{prefix}{key}.")
        elif value is None or isinstance(value, (int, float)):
            paths.append(f"{prefix}{key}")
    return paths


def due(step: int, steps_per_epoch: int, every: int, steps: int) -> int | None:
    """The epoch (1-based) that optimiser step ``step`` (1-based) ends, when it is a
    validation point: every ``every``-th epoch and the last step; else None."""
    if step == steps:
        return -(-step // steps_per_epoch)
    if step % steps_per_epoch == 0 and (step // steps_per_epoch) % every == 0:
        return step // steps_per_epoch
    return None


def record(history: dict[str, Any], epoch: int, value: float | None) -> bool:
    """Adds ``epoch``'s score to ``history`` ({"metric", "scores", "best"}) and returns
    whether it is the new best (an undefined score counts as -inf)."""
    score = -math.inf if value is None else value
    best = history.get("best")
    history["scores"].append({"epoch": epoch, "score": value})
    if best is not None and score <= (-math.inf if best["score"] is None else best["score"]):
        return False
    history["best"] = {"epoch": epoch, "score": value}
    return True
