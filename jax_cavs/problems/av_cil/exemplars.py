"""The class-balanced exemplar memory of AV-CIL and its baselines (spec_family §A5).

A fixed total budget |M| of training clips. Entering task t (after task t-1 is learned), with
n_seen the classes learned so far, every class gets m = |M| // n_seen slots: the classes of
task t-1 get m clips chosen by a rule (AV-CIL, SS-IL: ``random.sample`` of the class's
training clips, fewer when the class has fewer; iCaRL: herding), the older classes keep the
first m of the clips they had (the list is truncated, never re-drawn)
[AVCIL-code ours/dataloader_ours.py ``exemplarLoader._update_exemplars_`` l. 155-181].

The memory is the core's ``ReplayMemory`` of record indices (one class tag per clip), rebuilt
in class order so that each class's clips keep their order in the slots: truncation to the
first m is then ``ids_of_class(c)[:m]``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jax_cavs.cl import selection
from jax_cavs.core.memory import ReplayMemory


def per_class(budget: int, num_seen: int) -> int:
    """m = |M| // n_seen (the code's ``memory_size // (step · class_num_per_step)``)."""
    if budget < num_seen:
        raise ValueError(f"config field strategy.memory_size={budget} is smaller than the "
                         f"{num_seen} classes learned so far: every class needs a slot.")
    return budget // num_seen


def rebuild(memory: ReplayMemory, old_classes: Sequence[int],
            new_chosen: Mapping[int, np.ndarray], m: int) -> ReplayMemory:
    """The memory with each old class truncated to its first ``m`` clips, then the new
    classes' chosen clips (at most ``m`` each), in class order."""
    kept = {c: memory.ids_of_class(c)[:m] for c in old_classes}
    kept.update({c: np.asarray(ids)[:m] for c, ids in new_chosen.items()})
    ids, classes = selection.flatten(kept)
    return ReplayMemory.empty(memory.capacity, memory.tags.shape[1]).add(ids, classes)


def update(state, ctx, budget: int, rule: str = "random"):
    """``state`` with the memory after task ``ctx.task``: its classes chosen by ``rule``
    (``cl.selection``; herding on the model's fused features), the older ones truncated."""
    m = per_class(budget, int(np.sum(ctx.task.seen)))
    stats = selection.class_statistics(ctx, state, with_features=rule == "herding")
    chosen = selection.select(rule, stats, ctx.task.classes, m, ctx.rng)
    old = [int(c) for c in np.flatnonzero(ctx.task.old)]
    return state.replace(memory=rebuild(state.memory, old, chosen, m))
