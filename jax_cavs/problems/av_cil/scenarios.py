"""AV-CIL's class-incremental scenarios: fixed class splits over the released class order.

The "random" class split of the paper is a permutation frozen in the release: class id =
``category_encode_dict`` order, and task t (0-based) holds the ids [t·k, (t+1)·k)
(spec_family §A2) [AVCIL-code ours/dataloader_ours.py ``set_current_step_classes``]. Task t
trains on the train clips of its classes, validates on the val clips of every class seen so
far (the best epoch is kept, ``core.validation``) and is tested on the test clips of every
seen class (the evaluator ignores the unseen ones).

``cumulative`` is the oracle upper bound of the code (``--upper_bound True``,
fine_tuning/dataloader_incremental_fine_tuning.py l. 59-67): task t trains on the clips of
every class seen so far, all labelled.
"""

from __future__ import annotations

import numpy as np

from jax_cavs.core.scenario import Scenario, TaskSpec


def build_scenario(train_labels: np.ndarray, val_labels: np.ndarray, test_labels: np.ndarray,
                   num_classes: int, classes_per_task: int, *, cumulative: bool = False,
                   joint: bool = False, name: str = "") -> Scenario:
    """The T = num_classes / k tasks of k classes (one task of all, ``joint``)."""
    if classes_per_task < 1 or num_classes % classes_per_task:
        raise ValueError(f"config field scenario.classes_per_task={classes_per_task} does not "
                         f"divide the dataset's {num_classes} classes into tasks.")
    groups = tuple(tuple(range(t * classes_per_task, (t + 1) * classes_per_task))
                   for t in range(num_classes // classes_per_task))
    steps = (tuple(c for g in groups for c in g),) if joint else groups

    def records(labels, classes):
        return np.flatnonzero(np.isin(labels, classes)).astype(np.int64)

    tasks = []
    for t, classes in enumerate(steps):
        seen = [c for g in steps[:t + 1] for c in g]
        train = seen if cumulative else list(classes)
        tasks.append(TaskSpec(t, classes, records(train_labels, train),
                              val_indices=records(val_labels, seen),
                              label_policy="seen" if cumulative else "current"))
    for t, task in enumerate(tasks):
        if not len(task.train_indices):
            raise ValueError(f"task {t + 1} (classes {task.classes}) has no training clips.")
    return Scenario(name or f"{num_classes // classes_per_task}x{classes_per_task}", num_classes,
                    tuple(tasks), test_indices=np.arange(len(test_labels), dtype=np.int64),
                    report_groups=groups, has_background=False,
                    mode="cumulative" if cumulative else "class-incremental",
                    class_order=tuple(range(num_classes)))
