"""LwF as AV-CIL's authors run it (their Table 1 "LwF"): no exemplars; from the second task
on, CE over the current task's classes only and the task-wise KD of every old task at T = 2
[AVCIL-code LwF/train_incremental_lwf.py l. 96-110]: ``separated`` with ``memory_size = 0``.
(``cl``'s ``lwf`` is MiB's segmentation LwF, a different loss: CE over all seen classes and
one distillation over the old classes.)"""

from __future__ import annotations

import dataclasses

from jax_cavs.core import strategy as base
from jax_cavs.problems.av_cil.strategies.separated import SeparatedSoftmax


@base.register
@dataclasses.dataclass(frozen=True)
class LwFTaskKD(SeparatedSoftmax):
    name = "lwf_tkd"

    memory_size: int = 0
