"""A continual scenario: a sequence of task specifications over one fixed class axis.

Every problem's scenario builder (CAVS's N-M splits, AV-CIL's fixed splits, ContAV-Sep's 4x5
split, ATLAS's TIL/CIL/DIL streams) produces this one structure, and the loop needs nothing
else: which classes each task adds, which training (and validation) records it sees, how its
labels are remapped, which test records score it and which class groups form the columns of
the accuracy matrix. Shapes are static: the model always outputs all ``num_classes`` classes,
and the masks below say which are live.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# How a task's training records are labelled (the problem's stream implements each):
# "current": the task's classes kept, every other class -> background (replayed records keep
# their seen classes; PLOP/MiB's ``data_masking="current"``); "seen": every seen class kept.
LABEL_POLICIES = ("current", "seen")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One step of a scenario.

    Attributes:
      index: position in the scenario.
      classes: the classes this task adds (never background).
      train_indices: int64 record indices into the train split.
      val_indices: int64 record indices (of the scenario's ``val_split``) used for validation
        and checkpoint selection (``core.validation``; empty: no validation).
      label_policy: one of ``LABEL_POLICIES``.
    """

    index: int
    classes: tuple[int, ...]
    train_indices: np.ndarray
    val_indices: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), np.int64))
    label_policy: str = "current"

    def __post_init__(self):
        if self.label_policy not in LABEL_POLICIES:
            raise ValueError(f"task {self.index}: label_policy={self.label_policy!r} is not "
                             f"one of {LABEL_POLICIES}.")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Tasks over ``num_classes`` outputs and the test records that score them.

    Attributes:
      name: e.g. the split ``"12-4"``.
      num_classes: K, outputs of the model.
      tasks: the ``TaskSpec`` sequence.
      test_indices: record indices of the test split scored after every task.
      report_groups: the class groups whose scores form a row of the accuracy matrix (the
        split's tasks, also when training jointly).
      has_background: class 0 is shared background, live in every task and in group 0.
      task_id_at_test: the task identity is given at test time (task-incremental protocols).
      eval_points: extra evaluations inside the stream (task-free protocols): (task, step)
        pairs, the test split scored after that many optimiser steps of the task's training
        (``core.validation``; empty: after every task only).
      val_split: the split the tasks' ``val_indices`` index.
      mode, subset, class_order: how the builder made it, recorded in metrics.json.
    """

    name: str
    num_classes: int
    tasks: tuple[TaskSpec, ...]
    test_indices: np.ndarray
    report_groups: tuple[tuple[int, ...], ...]
    has_background: bool = True
    task_id_at_test: bool = False
    eval_points: tuple[tuple[int, int], ...] = ()
    val_split: str = "val"
    mode: str = ""
    subset: str = ""
    class_order: tuple[int, ...] = ()

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def _mask(self, classes: Sequence[int], background: bool) -> np.ndarray:
        mask = np.zeros(self.num_classes, bool)
        mask[list(classes)] = True
        if self.has_background:
            mask[0] = background
        return mask

    def current_mask(self, t: int) -> np.ndarray:
        """bool[K]: the classes task ``t`` adds (never background)."""
        return self._mask(self.tasks[t].classes, background=False)

    def old_mask(self, t: int) -> np.ndarray:
        """bool[K]: every class learned before task ``t`` (and background, if any)."""
        return self._mask([c for task in self.tasks[:t] for c in task.classes], background=True)

    def seen_mask(self, t: int) -> np.ndarray:
        """bool[K]: every class learned up to and including task ``t`` (and background)."""
        return self.old_mask(t) | self.current_mask(t)

    def group_mask(self, j: int) -> np.ndarray:
        """bool[K]: the classes of report group ``j``; group 0 includes the background."""
        return self._mask(self.report_groups[j], background=(j == 0))

    def describe(self) -> dict:
        """The scenario as metrics.json records it."""
        return {"split": self.name, "mode": self.mode, "subset": self.subset,
                "class_order": list(self.class_order),
                "groups": [list(g) for g in self.report_groups]}


def training_items(task_indices, memory_indices=()) -> list[tuple[int, bool, float]]:
    """The items of one training epoch: the task's records and the replayed ones
    (duplicates kept), as ``(record index, is_memory, valid)``."""
    return ([(int(i), False, 1.0) for i in task_indices]
            + [(int(i), True, 1.0) for i in memory_indices])


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    """Batches per epoch with ``drop_remainder`` (at least 1: tiny tasks still train)."""
    return max(num_items // batch_size, 1)
