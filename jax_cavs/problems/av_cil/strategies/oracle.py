"""The oracle upper bound of AV-CIL's Table 1: after every task, a model trained from scratch
on the clips of every class seen so far, with plain CE over them
[AVCIL-code fine_tuning/train_incremental_fine_tuning.py l. 63-64 (``--upper_bound True``: a
new model each step), fine_tuning/dataloader_incremental_fine_tuning.py l. 59-67 (all seen
classes' training clips), run_incremental_upper_bound.sh].

Run it on the cumulative scenario (``config.scenario.cumulative = True``, whose task t trains
on every seen class): ``begin_task`` replaces the learner by a fresh initialisation (key
``seed`` folded with the task), the loss is fine-tuning's.
"""

from __future__ import annotations

import dataclasses

import jax

from jax_cavs.cl.strategies.finetune import Finetune
from jax_cavs.core import strategy as base


@base.register
@dataclasses.dataclass(frozen=True)
class Oracle(Finetune):
    name = "oracle"
    first_task_objective = None  # its later tasks do not start from the first

    seed: int = 0

    def begin_task(self, state, task):
        if task.index > 0:
            fresh = self.problem.init(jax.random.fold_in(jax.random.key(self.seed), task.index))
            state = state.replace(params=fresh["params"])
        return super().begin_task(state, task)
