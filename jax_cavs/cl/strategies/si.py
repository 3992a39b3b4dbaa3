"""SI: synaptic intelligence, the per-parameter path integral (spec_family §D).

Zenke, Poole & Ganguli 2017, eqs 3–5. During a task, after every optimiser step (inside the
jit'd train step, ``after_step``),

    ω_k ← ω_k − g_k · Δθ_k

with Δθ the *actual* parameter change made by the optimiser (Adam, clipping and all; not the
plain-SGD approximation lr·g² of Mammoth) and g the gradient of the task loss *without* the SI
penalty, as FACIL and the original code use ("unreg_grads") [mmasana/FACIL
src/approach/path_integral.py; ganguli-lab/pathint]. The shared train step differentiates
loss + penalty, so the penalty's gradient, known in closed form at the pre-step parameters
θ_prev, is subtracted:  g = ∇(loss + R) − 2·λ·c·Ω·(θ_prev − θ*).

At the end of the task (``regularizers.consolidate_si``):
Ω ← Ω + max(ω, 0) / ((θ_end − θ_start)² + ξ), ω ← 0, θ* ← θ_end. θ_start is the anchor: the
parameters at the end of the previous task (the initial parameters for the first task), which
are the parameters the task started from since SI changes nothing between tasks. The clamp at 0
is the DECISION documented in ``consolidate_si``.

Defaults: λ = 0.1 and ξ = 0.1 with penalty ``λ Σ Ω (θ−θ*)²`` (c = 1), FACIL's path integral
(``--lamb 0.1`` "the 'c' trade-off parameter ... 1e-3 < c < 0.1", ``--damping 0.1``, the MNIST
value of Zenke et al.; they use ξ = 1e-3 on CIFAR).
"""

from __future__ import annotations

import dataclasses

import jax

from jax_cavs.cl import regularizers
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.importance import ImportanceStrategy


@base.register
@dataclasses.dataclass(frozen=True)
class SI(ImportanceStrategy):
    """SI; ``xi`` is the damping ξ of the consolidation."""

    name = "si"
    first_task_objective = None  # the path integral accumulates during the first task

    lam: float = 0.1
    c: float = 1.0
    xi: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.xi <= 0:
            raise ValueError(f"config field strategy.xi={self.xi} must be > 0 (the damping "
                             f"keeps the importance finite for parameters that did not move).")

    def penalty_gradient(self, params, state):
        """∂R/∂θ = 2·λ·c·Ω·(θ − θ*), the closed form of ``penalty``'s gradient."""
        scale = 2.0 * self.lam * self.c
        return jax.tree_util.tree_map(lambda p, a, w: scale * w * (p - a),
                                      params, state.anchor, state.importance)

    def after_step(self, state, grads, previous_params):
        task_grads = jax.tree_util.tree_map(
            lambda g, r: g - r, grads, self.penalty_gradient(previous_params, state))
        omega = regularizers.si_step(state.path_integral, task_grads, previous_params,
                                     state.params)
        return state.replace(path_integral=omega)

    def end_task(self, state, ctx):
        importance, omega, anchor = regularizers.consolidate_si(
            state.importance, state.path_integral, state.params, state.anchor, xi=self.xi)
        return self.consolidated(state, importance, anchor, path_integral=omega)
