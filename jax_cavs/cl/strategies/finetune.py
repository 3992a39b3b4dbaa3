"""Fine-tuning: plain cross-entropy on the current task's labels (spec_cavs §5.1).

The lower bound of continual learning: nothing protects the old classes, whose pixels are
labelled background in the new task's data, so the model forgets them (catastrophic
forgetting). The softmax runs over the classes seen so far; unseen classes are masked out.
"""

from __future__ import annotations

import dataclasses

from jax_cavs.core import strategy as base


@base.register
@dataclasses.dataclass(frozen=True)
class Finetune(base.Strategy):
    name = "finetune"

    def loss(self, state, batch, student, teacher, rng):
        ce = self.problem.loss(student, batch, state.seen)
        return ce, {"ce": ce}
