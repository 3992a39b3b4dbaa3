"""LwF-MC, the multi-class LwF of iCaRL (Rebuffi et al., CVPR 2017) without exemplars, as coded
for segmentation by MiB (spec_cavs §5.4).

``--method LWF-MC`` of the reference code [MiB:argparser.py]: ``icarl = True``,
``icarl_importance = 10``, combined mode (``icarl_disjoint = False``). Every class is an
independent sigmoid::

    L = BCE(z, onehot(y)) + icarl_importance · C_o · mean_{B,C_o,H,W} BCE(z_old, sigmoid(q_old))

* classification: ``Σ_{c∈seen} BCEWithLogits(z_c, onehot(y)_c)`` per pixel, 0 on ignored
  pixels ([BCEWithLogitsLossWithIgnoreIndex], ``losses.segmentation.multilabel_bce``);
* distillation: ``Σ_{c∈old} BCEWithLogits(z_c, sigmoid(q_c))`` per pixel
  (``losses.distillation.sigmoid_distillation``); the mean over pixels of this channel sum is
  the reference's ``C_o · mean_{B,C_o,H,W}``, so it is multiplied by ``icarl_importance`` only.

Both maps are averaged over all pixels of the annotated frames. On task 0 the distillation is
off (no teacher).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jax_cavs.cl import distillation
from jax_cavs.cl import reduce
from jax_cavs.problems.cavs.losses import segmentation
from jax_cavs.core import strategy as base


@base.register
@dataclasses.dataclass(frozen=True)
class LwFMC(base.Strategy):
    """LwF-MC hyper-parameters (default: the reference ``--method LWF-MC``).

    Attributes:
      icarl_importance: λ of the sigmoid distillation (10).
    """

    name = "lwf_mc"
    first_task_objective = "bce"  # per-class sigmoids from the first task on
    uses_teacher = True

    icarl_importance: float = 10.0

    def loss(self, state, batch, student, teacher, rng):
        bce = reduce.masked_mean(segmentation.multilabel_bce(
            student.logits, batch["labels"], state.seen), self.problem.weights(batch))
        icarl = reduce.masked_mean(distillation.sigmoid_distillation(
            student.logits, teacher.logits, state.old),
            self.problem.weights(batch, labelled=False))
        icarl = jnp.where(state.task > 0, icarl, 0.0)
        return bce + self.icarl_importance * icarl, {"bce": bce, "icarl": icarl}
