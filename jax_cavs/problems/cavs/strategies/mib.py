"""MiB, Modeling the Background (Cermelli et al., CVPR 2020), spec_cavs §4, §5.5.

``--method MiB`` of the reference code [MiB/PLOP:argparser.py]: ``loss_kd = 10``, ``unce``,
``unkd``, ``init_balanced``. On task t ≥ 1::

    L = UNCE(z, y) + loss_kd · UNKD(z, q)

* UNCE: old-class labels (background included) collapse to 0 and background's probability
  is the total probability of the old classes (``losses.segmentation.unbiased_cross_entropy``);
* UNKD: the teacher's background is matched by the student's background plus every new class
  (``losses.distillation.unbiased_knowledge_distillation``), α = 1 (``--alpha`` default);
* at the start of the task the new classes' classifier copies background's and both biases
  drop by ln(|C_t| + 1) (``init_balanced_classifier``, also used by PLOP and CMR).

On task 0 UNCE over ``old = {bg}`` is exactly the plain CE and UNKD is switched off (there is
no teacher), so the first task trains like fine-tuning. Both per-pixel maps are averaged over
all pixels of the annotated frames (``losses.reduce.masked_mean``, the reference's ``.mean()``).

MiB keeps no replay memory here. UNCE must not be used on replayed clips, whose true old
labels it would collapse into background (spec §6.1); a MiB + memory variant would need plain
CE on ``is_memory`` clips.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jax_cavs.cl import distillation
from jax_cavs.cl import reduce
from jax_cavs.problems.cavs.losses import segmentation
from jax_cavs.core.state import ContinualState
from jax_cavs.core import roles
from jax_cavs.core import strategy as base

def begin_balanced(state: ContinualState, task, enabled: bool, problem) -> ContinualState:
    """The balanced initialisation at the start of every incremental task (not task 0), when
    ``enabled``; the ``begin_task`` step shared by MiB, PLOP and CMR's visual twin."""
    if enabled and task.index > 0:
        return init_balanced_classifier(state, task.current, problem.param_roles()["classifier"])
    return state


def init_balanced_classifier(state: ContinualState, current, classifier) -> ContinualState:
    """MiB's balanced initialisation of the current classes' classifier rows (spec §4).

    ``W_c ← W_bg`` and ``b_c ← b_bg - ln(|C_t| + 1)`` for every c in ``current``, and also
    ``b_bg ← b_bg - ln(|C_t| + 1)`` ([PLOP:segmentation_module.py init_new_classifier],
    ``losses.distillation.init_balanced``). Only the student changes: call it after the
    teacher snapshot of ``base.Strategy.begin_task``, whose background bias must stay the old
    model's.

    Args:
      state: the continual state.
      current: bool [K] classes of the task being started (never background).
      classifier: the problem's "classifier" role (``core.roles``): regexes matching exactly
        one kernel [..., K] and one bias [K] (CAVS: the decoder's final 1x1 conv).

    Returns:
      ``state`` with the new classifier; every other parameter is the same array.
    """
    head = roles.matching(state.params, classifier)
    kernel = [path for path in head if path.endswith("kernel")]
    bias = [path for path in head if path.endswith("bias")]
    if len(kernel) != 1 or len(bias) != 1:
        raise ValueError(f"the problem's 'classifier' role {tuple(classifier)} must match one "
                         f"kernel and one bias; it matches {sorted(head)}.")
    new_kernel, new_bias = distillation.init_balanced(head[kernel[0]], head[bias[0]],
                                                      jnp.asarray(current))
    return state.replace(params=roles.replace_leaves(
        state.params, {kernel[0]: new_kernel, bias[0]: new_bias}))


@base.register
@dataclasses.dataclass(frozen=True)
class MiB(base.Strategy):
    """MiB hyper-parameters (defaults: the reference ``--method MiB``).

    Attributes:
      loss_kd: λ of the unbiased distillation (10).
      alpha: teacher temperature factor of UNKD (1).
      init_balanced: balanced initialisation of the new classes at each task t ≥ 1.
    """

    name = "mib"
    uses_teacher = True

    loss_kd: float = 10.0
    alpha: float = 1.0
    init_balanced: bool = True

    def begin_task(self, state, task):
        return begin_balanced(super().begin_task(state, task), task, self.init_balanced, self.problem)

    def loss(self, state, batch, student, teacher, rng):
        unce = reduce.masked_mean(segmentation.unbiased_cross_entropy(
            student.logits, batch["labels"], state.seen, state.old), self.problem.weights(batch))
        unkd = reduce.masked_mean(distillation.unbiased_knowledge_distillation(
            student.logits, teacher.logits, state.seen, state.old, self.alpha),
            self.problem.weights(batch, labelled=False))
        unkd = jnp.where(state.task > 0, unkd, 0.0)
        return unce + self.loss_kd * unkd, {"unce": unce, "unkd": unkd}
