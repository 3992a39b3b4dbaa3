"""AV-CIL (Pian et al., ICCV 2023, spec_family §A4) as its code trains it
[AVCIL-code ours/train_incremental_ours.py l. 110-187, run_incremental_ours.sh].

From the second task on, over the N rows of the current + exemplar batch::

    L = L_SS-CE + L_TKD + λ_I L_I-AVSS + λ_C L_C-AVSS + L_VAD
    L_VAD = λ Dist_spa + (1 − λ) Dist_tem                     (exemplar rows, old model)

(``separated`` for SS-CE and TKD; ``losses`` for the dual audio-visual similarity terms on the
normalised fusion inputs â, v̂ and the visual attention distillation of the spatial and
temporal maps). The first task is plain CE: no other term, as coded (the paper's figure
suggests the contrastive terms throughout). Defaults: AVE's λ_I = 0.5, λ_C = 1, λ = 0.5,
τ_I = τ_C = 0.05, |M| = 340 (K-S / VS100: λ_I = 0.1, |M| = 500 / 1500).

With one modality (Table 2's audio-only and visual-only rows) the audio-visual terms have no
input and AV-CIL is SS-IL: the terms are left out, not faked.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jax_cavs.core import strategy as base
from jax_cavs.problems.av_cil import losses
from jax_cavs.problems.av_cil.strategies.separated import SeparatedSoftmax


@base.register
@dataclasses.dataclass(frozen=True)
class AVCIL(SeparatedSoftmax):
    """Attributes beyond SS-IL's: lam_i / tau_i (I-AVSS), lam_c / tau_c (C-AVSS; ``per_positive``
    divides by |P_i| as eq 7 instead of N as coded), lam_vad (λ between the spatial and
    temporal distillation; ``vad=False`` drops the term)."""

    name = "av_cil"

    lam_i: float = 0.5
    tau_i: float = 0.05
    lam_c: float = 1.0
    tau_c: float = 0.05
    per_positive: bool = False
    lam_vad: float = 0.5
    vad: bool = True

    def loss(self, state, batch, student, teacher, rng):
        terms = self.separated_terms(state, batch, student, teacher)
        total = terms["ce"] + terms["tkd"]
        later = state.task > 0
        weights = batch["valid"]
        features = student.features
        if "audio" in features and "visual" in features:
            terms["i_avss"] = jnp.where(later, losses.instance_contrastive(
                features["audio"], features["visual"], weights, self.tau_i), 0.0)
            terms["c_avss"] = jnp.where(later, losses.class_contrastive(
                features["audio"], features["visual"], batch["label"], weights, self.tau_c,
                self.per_positive), 0.0)
            total += self.lam_i * terms["i_avss"] + self.lam_c * terms["c_avss"]
        if self.vad and "spatial" in features:
            terms["vad"] = jnp.where(later, losses.attention_distillation(
                features["spatial"], teacher.features["spatial"], features["temporal"],
                teacher.features["temporal"], weights * batch["is_memory"], self.lam_vad), 0.0)
            total += terms["vad"]
        return total, terms
