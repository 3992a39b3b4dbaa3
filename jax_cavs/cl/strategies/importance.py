"""The shared base of the importance-based regularisers EWC, SI and MAS (spec_family §D).

All three are fine-tuning (plain CE on the current task's labels, spec_cavs §5.1) plus one
quadratic penalty towards the parameters learned so far,

    R(θ) = λ · c · Σ_k Ω_k (θ_k − θ*_k)²            (``regularizers.quadratic_penalty``)

with anchor θ* = ``state.anchor`` and importance Ω = ``state.importance`` (both with the
params' structure; ``uses_importance`` makes ``create_state`` allocate them). On the first task
Ω = 0, so the penalty and its gradient vanish. The three methods differ only in how Ω is
estimated at the end of each task (``ewc.py``, ``si.py``, ``mas.py``).

Excluded parameters: every leaf whose '/'-joined path matches one of the ``exclude`` regexes
gets Ω = 0 at consolidation (``regularizers.param_mask`` / ``apply_mask``), hence no penalty and
exactly zero penalty gradient. ``DEFAULT_EXCLUDE`` removes the normalisation layers (Avalanche SI
excludes BatchNorm: its scale/shift are re-estimated per domain) and the classifier head (FACIL
keeps importance "for the model, but not for the heads", spec_family §D). Note that in
class-incremental segmentation the head is shared by all tasks, so leaving it free means the
old classes' logits are not protected by the penalty; set ``exclude`` to the norm layers only
to regularise the head as well.

The data passes that estimate Ω (EWC, MAS) are one jit'd gradient per *batch* of the task's
training videos (``gradient_sum``), accumulated on device; they run in eval mode (BatchNorm
running statistics, no dropout), as Avalanche computes its Fisher.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from jax_cavs.cl import regularizers
from jax_cavs.core.state import copy_tree
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.finetune import Finetune

# Parameter paths of ``jax_cavs.models.avs.AVSModel`` (see ``regularizers.param_paths``).
NORM_LAYERS = (
    r"(^|/)bn\d+/",           # ResNet BatchNorms (bn1 .. bn3, stem bn1)
    r"(^|/)downsample_1/",    # BatchNorm of the ResNet shortcut
    r"(^|/)W_z_1/",           # TPAVI's BatchNorm after W_z
    r"(^|/)norm_layer/",      # TPAVI's LayerNorm
)
CLASSIFIER_HEAD = (r"^decoder/output_conv_4/",)  # the 1x1 conv producing the K logits
DEFAULT_EXCLUDE = NORM_LAYERS + CLASSIFIER_HEAD


@dataclasses.dataclass(frozen=True)
class ImportanceStrategy(Finetune):
    """Fine-tuning + ``λ · c · Σ Ω (θ − θ*)²``; subclasses estimate Ω in ``end_task``.

    Attributes:
      lam: λ, the penalty strength.
      c: the constant factor of the penalty: ½ (FACIL EWC/MAS, Avalanche MAS/SI) or 1
        (Avalanche EWC, FACIL SI, Mammoth), spec_family §D.
      exclude: regexes (``re.search`` on '/'-joined parameter paths) of unregularised leaves.
    """

    uses_importance = True

    lam: float = 1.0
    c: float = 0.5
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def __post_init__(self):
        # Configs may hand over a list; the strategy must stay hashable (it keys the jit cache).
        object.__setattr__(self, "exclude", tuple(str(r) for r in self.exclude))
        for regex in self.exclude:
            try:
                re.compile(regex)
            except re.error as error:
                raise ValueError(f"config field strategy.exclude: {regex!r} is not a valid "
                                 f"regular expression ({error}).") from None
        if self.lam < 0:
            raise ValueError(f"config field strategy.lam={self.lam} must be >= 0.")
        if self.c <= 0:
            raise ValueError(f"config field strategy.c={self.c} must be > 0 (1/2 or 1).")

    def penalty(self, params, state):
        return regularizers.quadratic_penalty(params, state.anchor, state.importance,
                                              self.lam, self.c)

    def consolidated(self, state, importance, anchor, **fields):
        """``state`` with the new importance (excluded leaves zeroed) and anchor.

        The anchor is stored as a copy: the consolidation rules return the params themselves
        as the anchor, and the train step donates the whole state, so shared buffers would be
        donated twice.
        """
        mask = regularizers.param_mask(state.params, self.exclude)
        return state.replace(importance=regularizers.apply_mask(importance, mask),
                             anchor=copy_tree(anchor), **fields)


def gradient_sum(ctx: base.TaskContext, state, accumulate: Callable) -> tuple:
    """Runs the jit'd ``accumulate(acc, state, batch) -> acc`` over the task's training videos.

    ``acc`` starts as float32 zeros with the params' structure and is donated at every call,
    so the pass holds one accumulator on device. Batches come from ``ctx.batches`` (eval-mode
    decoding, labels restricted to the current task's classes, the last batch padded with
    ``valid = 0`` clips).

    Returns:
      (accumulated tree, number of batches).
    """
    acc = regularizers.zeros_like(state.params)
    num_batches = 0
    for host_batch in ctx.batches(ctx.train_indices, labels="current"):
        acc = accumulate(acc, state, ctx.device_batch(host_batch))
        num_batches += 1
    if num_batches == 0:
        raise ValueError(f"task {ctx.task.index} has no training videos to estimate the "
                         f"parameter importance from.")
    return acc, num_batches
