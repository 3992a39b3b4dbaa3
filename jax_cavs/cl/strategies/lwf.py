"""LwF, Learning without Forgetting (Li & Hoiem, 2016), as coded for segmentation by MiB and
PLOP (spec_cavs §5.2).

``--method LWF`` of the reference code [MiB/PLOP:argparser.py]: ``loss_kd = 100``, α = 1.
On task t ≥ 1 the learner is trained on the new task's labels with plain cross-entropy over
the seen classes, plus output distillation from the frozen model of task t-1::

    L = CE_seen(z, y) + loss_kd · KD(z, q)
    KD = -(1/C_o) Σ_{c∈old} softmax_old(α q)_c · log softmax_old(z)_c     (per pixel)

(``losses.distillation.knowledge_distillation``; the student's log-softmax runs over the old
channels only, as the reference narrows z to its first C_o channels.) Both maps are averaged
over all pixels of the annotated frames (``losses.reduce.masked_mean``). On task 0 there is no
teacher and ``KD`` is switched off, so the loss is exactly fine-tuning's CE.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jax_cavs.cl import distillation
from jax_cavs.cl import reduce
from jax_cavs.core import strategy as base


@base.register
@dataclasses.dataclass(frozen=True)
class LwF(base.Strategy):
    """LwF hyper-parameters (defaults: the reference ``--method LWF``).

    Attributes:
      loss_kd: λ of the output distillation (100).
      alpha: factor on the teacher logits inside its softmax (1).
    """

    name = "lwf"
    uses_teacher = True

    loss_kd: float = 100.0
    alpha: float = 1.0

    def loss(self, state, batch, student, teacher, rng):
        ce = self.problem.loss(student, batch, state.seen)
        kd = self.output_distillation(state, batch, student, teacher)
        return ce + self.loss_kd * kd, {"ce": ce, "kd": kd}

    def output_distillation(self, state, batch, student, teacher):
        """Unweighted KD term (float32 scalar), 0 on task 0; over every real element, labelled
        or not (distillation needs no labels)."""
        kd = reduce.masked_mean(distillation.knowledge_distillation(
            student.logits, teacher.logits, state.old, self.alpha),
            self.problem.weights(batch, labelled=False))
        return jnp.where(state.task > 0, kd, 0.0)
