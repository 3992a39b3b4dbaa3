"""MAS: memory-aware synapses, the sensitivity of the output norm (spec_family §D).

Aljundi et al. 2018. At the end of every task, over the task's training videos (eval mode,
no labels used):

    Ω_new,k = (1/N) · Σ_batches B · |∂/∂θ_k mean_{x∈batch} ‖f(x)‖₂|

i.e. per batch the gradient of the batch mean of the L2 norm (not squared: the FACIL/Avalanche
code; the paper uses the squared norm), in absolute value, weighted by the batch size, summed
and divided by the number of videos N [mmasana/FACIL src/approach/mas.py; Avalanche
training/plugins/mas.py]; ``regularizers.mas_objective`` / ``accumulate_abs`` /
``mas_from_grads``. Padding clips (``valid = 0``) have f = 0 and contribute nothing; B is the
static batch size, so the sum is exactly Σ_real-clips ‖f‖ and N counts the real clips.

f(x) (DECISION, spec_family §D "[inferred]"): the flattened segmentation logits of one clip,
[T·H·W·K], restricted to the classes learned so far (unseen channels set to 0: their head rows
are untrained and take no part in the model's current function). Padded frames already have
zero logits.

Consolidation (``regularizers.consolidate_mas``): Ω ← α·Ω + (1−α)·Ω_new, θ* ← θ_end.
Defaults: λ = 1, c = ½, α = 0.5, FACIL's MAS (``--lamb 1``, ``--alpha 0.5``, penalty
``Σ Ω (θ−θ*)² / 2``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jax_cavs.cl import regularizers
from jax_cavs.core import steps, xla
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.importance import ImportanceStrategy, gradient_sum


@base.register
@dataclasses.dataclass(frozen=True)
class MAS(ImportanceStrategy):
    """MAS; ``alpha`` weighs the previous importance in the merge."""

    name = "mas"

    lam: float = 1.0
    c: float = 0.5
    alpha: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"config field strategy.alpha={self.alpha} must be in [0, 1).")

    def sensitivity(self, state, ctx: base.TaskContext):
        """Ω_new of the current task at ``state.params`` (params' tree)."""
        abs_sum, _ = gradient_sum(ctx, state, _sensitivity_accumulator(ctx.problem))
        return regularizers.mas_from_grads(abs_sum, len(ctx.train_indices))

    def end_task(self, state, ctx):
        importance, anchor = regularizers.consolidate_mas(
            state.importance, self.sensitivity(state, ctx), state.params, alpha=self.alpha)
        return self.consolidated(state, importance, anchor)


def output_norm_objective(logits: jnp.ndarray, seen: jnp.ndarray,
                          valid: jnp.ndarray) -> jnp.ndarray:
    """``mean_b ‖f_b‖₂`` over the static batch, f_b = clip b's seen-class logits.

    Args:
      logits: float [B, ..., K] (CAVS: [B, T, H, W, K]; a classifier: [B, K]); seen: bool
        [K]; valid: float [B] (0 for padding clips).
    """
    valid = valid.reshape(valid.shape + (1,) * (logits.ndim - 1))
    outputs = jnp.where(seen, logits, 0.0) * valid
    return regularizers.mas_objective(outputs)


@functools.lru_cache(maxsize=None)
def _sensitivity_accumulator(problem):
    """jit'd ``(acc, state, batch) -> acc + B·|∇ mean_b ‖f_b‖|``, compiled once per problem."""

    def accumulate(acc, state, batch):
        def objective(params):
            outputs, _ = problem.apply(steps.variables(params, state.batch_stats), batch,
                                       train=False)
            return output_norm_objective(outputs.logits, state.seen, batch["valid"])

        batch_size = batch["valid"].shape[0]
        return regularizers.accumulate_abs(acc, jax.grad(objective)(state.params),
                                           weight=batch_size)

    return xla.jit(accumulate, donate_argnums=0)
