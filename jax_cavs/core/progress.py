"""What a person watching a run reads: its log lines, progress bars and per-task timings.

Tasks are numbered from 1 here ("task 2/2"), as everywhere a person reads them (the report,
the end-of-run table); the files a program reads (``metrics.json``, checkpoints) keep the
0-based index. Log lines go through ``tqdm.write`` so they never glue onto a progress bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from tqdm import tqdm

# Metrics every train step returns that the progress bar leaves to TensorBoard.
_BAR_HIDDEN = ("penalty", "grad_norm")
BAR_TERMS = 3  # loss terms shown beside the total loss
_PART_NAMES = {"train": "train", "end_task": "end of task", "eval": "eval"}  # Timings.PARTS


def log(message: str) -> None:
    """One ``[jax_cavs]`` line on stderr, above any progress bar."""
    tqdm.write(f"[jax_cavs] {message}", file=sys.stderr)
    sys.stderr.flush()


def task_label(t: int, num_tasks: int) -> str:
    """``"task 2/3"`` for the 0-based task index ``t``."""
    return f"task {t + 1}/{num_tasks}"


def postfix(values: Mapping[str, float]) -> str:
    """The progress bar's postfix: the total loss and the first ``BAR_TERMS`` loss terms
    (3 significant digits), "+k" for the terms left to TensorBoard, so the bar keeps its
    width however many terms a strategy has."""
    terms = [k for k in values if k != "loss" and k not in _BAR_HIDDEN]
    shown = (["loss"] if "loss" in values else []) + terms[:BAR_TERMS]
    text = " ".join(f"{k}={values[k]:.3g}" for k in shown)
    return text + (f" +{len(terms) - BAR_TERMS}" if len(terms) > BAR_TERMS else "")


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def task_summary(t: int, num_tasks: int, headline: str, scores: Mapping[str, Any],
                 seconds: Mapping[str, float]) -> str:
    """The line printed when a task ends: the evaluator's headline record (%) and where the
    time went, e.g. ``task 1/2 done: miou (%) old -, new 20.1, all 20.1; 262 s (train 258
    s, end of task 0.4 s, eval 3.1 s)``."""
    record = ", ".join(f"{k} {percent(v)}" for k, v in scores.items())
    parts = ", ".join(f"{_PART_NAMES[name]} {_seconds(s)}"
                      for name, s in seconds.items() if name != "total")
    return (f"{task_label(t, num_tasks)} done: {headline} (%) {record}; "
            f"{_seconds(seconds['total'])} ({parts})")


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def position(meta: Mapping[str, Any], num_tasks: int, steps: int | None = None) -> str:
    """Where a checkpoint's ``meta`` stands, for a person: ``"task 1/2, training step 33 of
    990"``, ``"task 2/2, its start"``, ``"the end of the run"``..."""
    t, phase = meta["task"], meta["phase"]
    if t >= num_tasks:
        return "the end of the run"
    label = task_label(t, num_tasks)
    of = f" of {steps}" if steps else ""
    if phase == "start":
        return f"{label}, its start"
    if phase == "train":
        return f"{label}, training step {meta['step']}{of}"
    if phase == "aux" and meta.get("aux_training") not in meta.get("aux_done", []):
        return f"{label}, {meta['aux_training']} training step {meta['step']}{of}"
    return f"{label}, after its training"


class Timings:
    """Seconds per part of a task (``train``: begin/prepare and the learner's training;
    ``end_task``: the auxiliary models' training and the strategy's end of task; ``eval``:
    the test set and the report's examples), kept in the checkpoint ``meta`` so a resumed
    task counts the time before its last checkpoint too."""

    PARTS = ("train", "end_task", "eval")

    def __init__(self, meta: dict[str, Any]):
        self.meta, self.part, self.since = meta, None, time.monotonic()

    def enter(self, part: str | None) -> None:
        """Counts the time from now towards ``part`` (None: towards nothing)."""
        self.flush()
        self.part = part

    def flush(self) -> None:
        """Adds the time since the last call to the current part (before every save)."""
        now = time.monotonic()
        if self.part is not None:
            seconds = self.meta.setdefault("timing", dict.fromkeys(self.PARTS, 0.0))
            seconds[self.part] += now - self.since
        self.since = now

    def finish(self) -> dict[str, float]:
        """The task's seconds per part and in total (rounded); restarts for the next task."""
        self.enter(None)
        seconds = self.meta.pop("timing", dict.fromkeys(self.PARTS, 0.0))
        return {**{k: round(seconds[k], 1) for k in self.PARTS},
                "total": round(sum(seconds.values()), 1)}
