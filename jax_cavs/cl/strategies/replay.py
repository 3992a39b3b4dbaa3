"""Replay: fine-tuning on the task's videos mixed with a rehearsal memory of past videos.

The loss is fine-tuning's CE over the seen classes (spec_cavs §5.1). What changes is the data:
at the end of every task, ``per_class`` training videos of each class learned in the task are
chosen (``jax_cavs.cl.selection``: ``random`` or iCaRL ``herding``) and their record
indices stored in ``state.memory``; the following tasks' streams mix the memory videos into
the task's videos (``Strategy.replay_ids``, shuffled together every epoch). Memory clips keep
their true labels restricted to the classes seen so far (the pipeline's rule for
``is_memory`` items, spec_cavs §6 "Memory labels"), so old-class pixels of replayed videos are
supervised as their class rather than background.

The memory holds ``per_class × (K − 1)`` slots (one budget per foreground class; a video picked
for several classes takes one slot), CMR's fixed budget of k videos per class with k = 5
(spec_cavs §6.4; the paper's ablation uses 3/5/7). The choice per task is also written to
``<workdir>/memory/replay_<t>.json`` as ``{"task": t, "selection": rule, "classes": {"<c>":
[record ids]}}``.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from jax_cavs.cl import selection
from jax_cavs.core import jsonio
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.finetune import Finetune


@base.register
@dataclasses.dataclass(frozen=True)
class Replay(Finetune):
    """Fine-tuning + rehearsal; ``per_class`` videos per class chosen by ``selection``."""

    name = "replay"

    per_class: int = 5
    selection: str = "random"

    def __post_init__(self):
        if self.per_class < 1:
            raise ValueError(f"config field strategy.per_class={self.per_class} must be >= 1.")
        if self.selection not in selection.SELECTIONS:
            raise ValueError(f"config field strategy.selection={self.selection!r} is not one "
                             f"of {selection.SELECTIONS}.")

    def memory_capacity(self, num_classes: int) -> int:
        """A budget for every class but the shared background (when the problem has one)."""
        background = getattr(self.problem, "has_background", True)
        return self.per_class * (num_classes - int(background))

    def end_task(self, state, ctx):
        stats = selection.class_statistics(ctx, state,
                                           with_features=self.selection == "herding")
        chosen = selection.select(self.selection, stats, ctx.task.classes, self.per_class,
                                  ctx.rng)
        ids, classes = selection.flatten(chosen)
        if jax.process_index() == 0:
            write_selection(ctx.workdir, ctx.task.index, self.selection, chosen)
        return state.replace(memory=state.memory.add(ids, classes))


def write_selection(workdir: str, task: int, rule: str, chosen: dict) -> None:
    """Writes ``<workdir>/memory/replay_<task>.json`` (format in the module docstring)."""
    record = {"task": task, "selection": rule,
              "classes": {str(c): [int(i) for i in ids] for c, ids in sorted(chosen.items())}}
    jsonio.write_json_atomic(os.path.join(workdir, "memory", f"replay_{task}.json"), record)
