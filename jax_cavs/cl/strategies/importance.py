"""The shared base of the importance-based regularisers EWC, SI and MAS (spec_family §D).

All three are fine-tuning (plain CE on the current task's labels, spec_cavs §5.1) plus one
quadratic penalty towards the parameters learned so far,

    R(θ) = λ · c · Σ_k Ω_k (θ_k − θ*_k)²            (``regularizers.quadratic_penalty``)

with anchor θ* = ``state.anchor`` and importance Ω = ``state.importance`` (both with the
params' structure; ``uses_importance`` makes ``create_state`` allocate them). On the first task
Ω = 0, so the penalty and its gradient vanish. The three methods differ only in how Ω is
estimated at the end of each task (``ewc.py``, ``si.py``, ``mas.py``).

Regularised parameters are named by the problem's parameter roles (``core.roles``): a leaf is
regularised when it is in ``include_roles`` / matches ``include`` (every leaf when both are
empty; LRA-style methods: "adapter" + "decoder" only) and is in none of ``exclude_roles`` and
matches none of ``exclude``. The others get Ω = 0 at consolidation (``regularizers.apply_mask``),
hence no penalty and exactly zero penalty gradient. The default excludes the "norm" role
(Avalanche SI excludes BatchNorm: its scale/shift are re-estimated per domain) and the
"classifier" role (FACIL keeps importance "for the model, but not for the heads",
spec_family §D). In class-incremental segmentation the head is shared by all tasks, so leaving
it free means the old classes' logits are not protected by the penalty; set
``exclude_roles=("norm",)`` to regularise the head as well.

The data passes that estimate Ω (EWC, MAS) are one jit'd gradient per *batch* of the task's
training videos (``gradient_sum``), accumulated on device; they run in eval mode (BatchNorm
running statistics, no dropout), as Avalanche computes its Fisher.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jax_cavs.cl import regularizers
from jax_cavs.core import hostpass, roles
from jax_cavs.core.state import copy_tree
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.finetune import Finetune


@dataclasses.dataclass(frozen=True)
class ImportanceStrategy(Finetune):
    """Fine-tuning + ``λ · c · Σ Ω (θ − θ*)²``; subclasses estimate Ω in ``end_task``.

    Attributes:
      lam: λ, the penalty strength.
      c: the constant factor of the penalty: ½ (FACIL EWC/MAS, Avalanche MAS/SI) or 1
        (Avalanche EWC, FACIL SI, Mammoth), spec_family §D.
      exclude_roles / include_roles: parameter roles of the problem left free / regularised.
      exclude / include: extra regexes (``re.search`` on '/'-joined parameter paths).
    """

    uses_importance = True

    lam: float = 1.0
    c: float = 0.5
    exclude_roles: tuple[str, ...] = ("norm", "classifier")
    include_roles: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    def __post_init__(self):
        # Configs may hand over lists; the strategy must stay hashable (it keys the jit cache).
        for field in ("exclude_roles", "include_roles", "exclude", "include"):
            object.__setattr__(self, field, tuple(str(r) for r in getattr(self, field)))
            if field in ("exclude", "include"):
                roles.compile_regexes(getattr(self, field), f"strategy.{field}")
        if self.problem is not None:
            self.regularised_regexes()
        if self.lam < 0:
            raise ValueError(f"config field strategy.lam={self.lam} must be >= 0.")
        if self.c <= 0:
            raise ValueError(f"config field strategy.c={self.c} must be > 0 (1/2 or 1).")

    def regularised_regexes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(include, exclude) regexes: the named roles of the problem plus the extra ones."""
        declared = self.problem.param_roles() if self.problem is not None else {}
        include = roles.role_regexes(declared, self.include_roles, "strategy.include_roles")
        exclude = roles.role_regexes(declared, self.exclude_roles, "strategy.exclude_roles")
        return include + self.include, exclude + self.exclude

    def penalty(self, params, state):
        return regularizers.quadratic_penalty(params, state.anchor, state.importance,
                                              self.lam, self.c)

    def consolidated(self, state, importance, anchor, **fields):
        """``state`` with the new importance (excluded leaves zeroed) and anchor.

        The anchor is stored as a copy: the consolidation rules return the params themselves
        as the anchor, and the train step donates the whole state, so shared buffers would be
        donated twice.
        """
        include, exclude = self.regularised_regexes()
        mask = roles.leaf_mask(state.params, include, exclude)
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
    return hostpass.accumulate(lambda acc, batch: accumulate(acc, state, ctx.device_batch(batch)),
                               regularizers.zeros_like(state.params),
                               ctx.batches(ctx.train_indices, labels="current"))
