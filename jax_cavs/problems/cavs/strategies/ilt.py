"""ILT, Incremental Learning Techniques for semantic segmentation (Michieli & Zanuttigh,
2019), as coded by MiB (spec_cavs §5.3).

``--method ILT`` of the reference code [MiB:argparser.py]: ``loss_kd = 100``, ``loss_de =
100``. LwF (``strategies.lwf``) plus distillation of an intermediate feature map::

    L = CE_seen(z, y) + loss_kd · KD(z, q) + loss_de · MSE(f_new, f_old)

where the reference's f is ``features['body']``, the ResNet output before the DeepLab head,
compared with ``nn.MSELoss()`` (``losses.distillation.feature_mse``).

DECISION (spec §5.3, exposed as ``feature``): the distilled map of the AVS model is
``"backbone"``, the last ResNet stage (layer4 at stride 32, the exact counterpart of
DeepLab's ``body``). ``"neck"`` distils the deepest TPAVI-fused map F_3 instead (post-ASPP/
TPAVI, it also carries the audio), ``"decoder"`` the decoder's D1 at stride 2. The squared
error is averaged per frame and then over the annotated frames of real clips (padded frames,
whose backbone maps are not zero, weigh 0). On task 0 both distillation terms are off.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jax_cavs.cl import distillation
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.lwf import LwF

# Feature maps ILT can distil, all [N*T, h, w, c] (``AVSModel``'s features dict).
DISTILLED_FEATURES = {
    "backbone": lambda features: features["backbone"][-1],
    "neck": lambda features: features["neck"][-1],
    "decoder": lambda features: features["decoder"],
}


@base.register
@dataclasses.dataclass(frozen=True)
class ILT(LwF):
    """ILT hyper-parameters (defaults: the reference ``--method ILT``).

    Attributes:
      loss_kd, alpha: LwF's output distillation (100, 1).
      loss_de: λ of the feature distillation (100).
      feature: which feature map is distilled, a key of ``DISTILLED_FEATURES``.
    """

    name = "ilt"

    loss_de: float = 100.0
    feature: str = "backbone"

    def __post_init__(self):
        if self.feature not in DISTILLED_FEATURES:
            raise ValueError(f"config field strategy.feature={self.feature!r} is not a "
                             f"feature ILT can distil; valid: {sorted(DISTILLED_FEATURES)}.")

    def loss(self, state, batch, student, teacher, rng):
        total, terms = super().loss(state, batch, student, teacher, rng)
        select = DISTILLED_FEATURES[self.feature]
        # [N*T] in the features' frame order; every real frame (distillation needs no labels).
        frame_weights = self.problem.weights(batch, labelled=False).reshape(-1)
        de = distillation.feature_mse(select(teacher.features), select(student.features),
                                      frame_weights)
        de = jnp.where(state.task > 0, de, 0.0)
        return total + self.loss_de * de, {**terms, "de": de}
