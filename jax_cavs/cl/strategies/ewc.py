"""EWC: elastic weight consolidation with a diagonal empirical Fisher (spec_family §D).

Training is fine-tuning plus ``λ · c · Σ_k F_k (θ_k − θ*_k)²`` (``ImportanceStrategy``). At the
end of every task the diagonal Fisher of the task just learned is estimated as

    F_k = (1 / #batches) · Σ_batches (∂L_b/∂θ_k)²

with L_b the strategy's task loss (CE over the seen classes on the task's labels, spec_cavs
§5.1) on one batch of the task's training videos, at the final parameters, in eval mode —
Avalanche's ``EWCPlugin.compute_importances`` [ContinualAI/avalanche training/plugins/ewc.py]
(FACIL's Σ g²·B / N is the same for full batches). DECISION (spec_family §D "[inferred]"): the
*empirical* Fisher, i.e. gradients of the loss with the ground-truth masks (Avalanche), not
FACIL's default of the model's own argmax predictions; each batch's gradient is of the batch
mean loss, not per sample, as both reference codes do.

Consolidation (``regularizers.consolidate_ewc``), ``mode``:
* ``"online"`` (Schwarz et al. 2018; Avalanche/Mammoth EWC-on): Ω ← γ·Ω + F, θ* ← θ_end.
  FACIL's merge Ω' ← αΩ' + (1−α)F (both starting at 0) gives Ω' = (1−α)·Ω when γ = α, so
  FACIL's (λ, α) is this mode with γ = α and λ·(1−α): (5000, 0.5) is γ = 0.5, λ = 2500.
* ``"separate"`` (Avalanche default): one penalty per past task, stored exactly as a single
  quadratic (see ``consolidate_ewc``).

Defaults: FACIL's λ = 5000 and c = ½ (``--lamb 5000``, penalty ``Σ F (θ−θ*)² / 2``)
[mmasana/FACIL src/approach/ewc.py], but *not* FACIL's merge: online with γ = 1, i.e.
Ω = Σ_t F_t without decay (Avalanche's online EWC with decay 1; Mammoth's ``ewc_on`` has no
default γ). After one task Ω = F_1 where FACIL has 0.5·F_1, so the penalty on the second
task is twice FACIL's; ``gamma=0.5, lam=2500`` reproduces FACIL exactly (above). MiB's
segmentation code instead min-max normalises each Fisher tensor to [0, 1] and uses λ = 500
with c = 1 (spec_cavs §5.7, [fcdl94/MiB utils/regularizer.py]); we keep the unnormalised
Fisher, whose scale is the task loss's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from jax_cavs.cl import regularizers
from jax_cavs.core import steps, xla
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.importance import ImportanceStrategy, gradient_sum


@base.register
@dataclasses.dataclass(frozen=True)
class EWC(ImportanceStrategy):
    """EWC; ``mode`` ∈ {"online", "separate"}, ``gamma`` the online decay γ."""

    name = "ewc"

    lam: float = 5000.0
    c: float = 0.5
    mode: str = "online"
    gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in regularizers.EWC_MODES:
            raise ValueError(f"config field strategy.mode={self.mode!r} is not one of "
                             f"{regularizers.EWC_MODES}.")
        if self.gamma < 0:
            raise ValueError(f"config field strategy.gamma={self.gamma} must be >= 0.")

    def fisher(self, state, ctx: base.TaskContext):
        """Diagonal empirical Fisher of the current task at ``state.params`` (params' tree)."""
        squared_sum, num_batches = gradient_sum(ctx, state, _fisher_accumulator(self, ctx.problem))
        return regularizers.fisher_from_grads(squared_sum, num_batches)

    def end_task(self, state, ctx):
        importance, anchor = regularizers.consolidate_ewc(
            state.importance, state.anchor, self.fisher(state, ctx), state.params,
            mode=self.mode, gamma=self.gamma)
        return self.consolidated(state, importance, anchor)


@functools.lru_cache(maxsize=None)
def _fisher_accumulator(strategy: EWC, problem):
    """jit'd ``(acc, state, batch) -> acc + g²``, compiled once per strategy and problem.

    g is the gradient of ``strategy.loss`` (no penalty) at ``state.params`` in eval mode; the
    loss's rng argument is unused by fine-tuning's CE and fixed.
    """

    def accumulate(acc, state, batch):
        def task_loss(params):
            outputs, _ = problem.apply(steps.variables(params, state.batch_stats), batch,
                                       train=False)
            loss, _ = strategy.loss(state, batch, outputs, None, jax.random.key(0))
            return loss

        return regularizers.accumulate_squared(acc, jax.grad(task_loss)(state.params))

    return xla.jit(accumulate, donate_argnums=0)
