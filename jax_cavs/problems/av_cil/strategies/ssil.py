"""SS-IL (Ahn et al., ICCV 2021) as AV-CIL's Table 1 runs it: separated softmax, task-wise
KD at T = 2 and a random class-balanced exemplar memory (``separated``)
[AVCIL-code SSIL/train_incremental_ssil.py, SSIL/dataloader_ssil.py, run_incremental_ssil.sh:
|M| = 340 / 500 / 1500 on AVE / K-S / VS100]. Ratio-preserving batches: B_c = 256 current
and B_e = 128 exemplar clips per step (``config.train``)."""

from __future__ import annotations

import dataclasses

from jax_cavs.core import strategy as base
from jax_cavs.problems.av_cil.strategies.separated import SeparatedSoftmax


@base.register
@dataclasses.dataclass(frozen=True)
class SSIL(SeparatedSoftmax):
    name = "ssil"
