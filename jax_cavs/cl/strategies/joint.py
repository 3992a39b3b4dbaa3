"""Joint training: the offline upper bound.

One task holding every class of the scenario, trained with plain cross-entropy on all labels.
The scenario's split still defines the old/new class groups used for reporting, so its table
row is directly comparable with the continual methods.
"""

from __future__ import annotations

import dataclasses

from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.finetune import Finetune


@base.register
@dataclasses.dataclass(frozen=True)
class Joint(Finetune):
    name = "joint"
    single_task = True
    first_task_objective = None
