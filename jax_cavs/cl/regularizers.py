"""Importance-based regularisers (EWC, SI, MAS) as pure pytree transforms (spec_family §D).

All three share one penalty: after task t there is an anchor θ* and an importance Ω, both with
the params' tree structure, and the loss of later tasks adds
``R(θ) = λ · c · Σ_k Ω_k (θ_k - θ*_k)²`` (``quadratic_penalty``; c = ½ in FACIL EWC/MAS and
Avalanche MAS/SI, c = 1 in Avalanche EWC and Mammoth). They differ only in how Ω is estimated:

* **EWC** (diagonal empirical Fisher): per batch square the task-loss gradient, sum
  (``accumulate_squared``), divide by the number of batches (``fisher_from_grads``) [Avalanche
  ewc.py]; merge with ``consolidate_ewc`` in ``"online"`` (Ω ← γΩ + F, θ* ← θ) or
  ``"separate"`` (one penalty per past task) mode.
* **SI** (path integral): after every optimiser step ``si_step`` adds ``-g · Δθ`` (g the
  unregularised task-loss gradient, Δθ the *actual* parameter change, correct for Adam); at
  the task end ``consolidate_si`` adds ``ω / (Δθ_task² + ξ)`` to Ω [FACIL path_integral.py].
* **MAS** (output sensitivity): per batch the gradient of ``mas_objective`` (mean over samples
  of ‖f(x)‖₂), absolute value times the batch size, summed (``accumulate_abs``), divided by
  the number of samples (``mas_from_grads``); merged with ``consolidate_mas``
  (Ω ← αΩ + (1-α)Ω_new) [FACIL mas.py].

The model/data passes that produce the gradients belong to the strategies; this module only
transforms pytrees and is jit-able throughout. ``core.roles.leaf_mask`` selects the
regularised leaves (e.g. excludes normalisation layers and heads, as Avalanche SI excludes
BatchNorm); ``apply_mask(importance, mask)`` zeroes the excluded leaves' importance, which
removes them from the penalty.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
EWC_MODES = ("online", "separate")


def apply_mask(tree: PyTree, mask: PyTree) -> PyTree:
    """Zeros the leaves of ``tree`` whose ``mask`` leaf is False (same structure)."""
    return jax.tree_util.tree_map(lambda x, keep: jnp.where(keep, x, 0).astype(x.dtype),
                                  tree, mask)


def zeros_like(params: PyTree) -> PyTree:
    """float32 zeros with the params' structure: the initial importance / accumulators."""
    return jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)


def quadratic_penalty(params: PyTree, anchor: PyTree, importance: PyTree, lam: float,
                      c: float = 0.5) -> jnp.ndarray:
    """``λ · c · Σ_k Ω_k (θ_k - θ*_k)²`` over all leaves; float32 scalar, 0 at the anchor."""
    terms = jax.tree_util.tree_map(
        lambda p, a, w: jnp.sum(w * jnp.square(p.astype(jnp.float32) - a)),
        params, anchor, importance)
    return lam * c * sum(jax.tree_util.tree_leaves(terms), jnp.zeros((), jnp.float32))


# ----------------------------------------------------------------------------------------
# Accumulators (one call per batch).


def accumulate_squared(accumulator: PyTree, grads: PyTree, weight: float = 1.0) -> PyTree:
    """``acc + weight · g²`` leaf-wise (EWC's squared gradients)."""
    return jax.tree_util.tree_map(lambda a, g: a + weight * jnp.square(g), accumulator, grads)


def accumulate_abs(accumulator: PyTree, grads: PyTree, weight: float = 1.0) -> PyTree:
    """``acc + weight · |g|`` leaf-wise (MAS; ``weight`` = batch size)."""
    return jax.tree_util.tree_map(lambda a, g: a + weight * jnp.abs(g), accumulator, grads)


def fisher_from_grads(grad_sq_sum: PyTree, n_batches: int) -> PyTree:
    """Diagonal empirical Fisher ``Σ_batches g² / n_batches`` (Avalanche EWC)."""
    return jax.tree_util.tree_map(lambda s: s / n_batches, grad_sq_sum)


def mas_from_grads(abs_grad_sum: PyTree, n_samples: int) -> PyTree:
    """MAS sensitivity ``Σ_batches |g| · B / N`` given the weighted sum and N (FACIL MAS)."""
    return jax.tree_util.tree_map(lambda s: s / n_samples, abs_grad_sum)


def _safe_norm(x: jnp.ndarray) -> jnp.ndarray:
    squared = jnp.sum(jnp.square(x), axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def mas_objective(outputs: jnp.ndarray) -> jnp.ndarray:
    """MAS's differentiated quantity: ``mean_b ‖flatten(f(x_b))‖₂``.

    The L2 norm, not its square, as FACIL/Avalanche code it. ``outputs``: float [B, ...];
    the gradient is 0, not NaN, for an all-zero output.
    """
    return jnp.mean(_safe_norm(outputs.reshape(outputs.shape[0], -1)))


def si_step(omega: PyTree, grads: PyTree, params_before: PyTree, params_after: PyTree
            ) -> PyTree:
    """SI path-integral update after one optimiser step: ``ω ← ω - g · (θ_after - θ_before)``.

    ``grads`` must be the gradient of the task loss *without* the SI penalty (FACIL).
    """
    return jax.tree_util.tree_map(
        lambda w, g, before, after: w - g * (after - before),
        omega, grads, params_before, params_after)


# ----------------------------------------------------------------------------------------
# End-of-task consolidation: (importance, anchor[, omega]) for the next task.


def consolidate_ewc(importance: PyTree, anchor: PyTree, fisher: PyTree, params: PyTree, *,
                    mode: str = "online", gamma: float = 1.0) -> tuple[PyTree, PyTree]:
    """Merges this task's Fisher into (importance, anchor).

    ``"online"`` (Schwarz et al., Avalanche/Mammoth EWC-on): ``Ω ← γΩ + F``, ``θ* ← θ``.

    ``"separate"`` (Avalanche): one penalty per past task, ``Σ_t Ω_t (θ - θ*_t)²``.
    DECISION: stored exactly as a single quadratic with ``Ω = Σ_t Ω_t`` and the
    importance-weighted anchor ``θ* = Σ_t Ω_t θ*_t / Σ_t Ω_t`` (θ where Ω = 0): its gradient
    and Hessian are identical to the per-task sum and its value differs only by a constant
    ≥ 0, so the state keeps static shapes whatever the number of tasks. ``gamma`` is unused.

    The first task (Ω = 0) gives (F, θ) in both modes.
    """
    if mode not in EWC_MODES:
        raise ValueError(f"EWC mode={mode!r} is not one of {EWC_MODES}.")
    if mode == "online":
        merged = jax.tree_util.tree_map(lambda w, f: gamma * w + f, importance, fisher)
        return merged, params

    def weighted_anchor(w, a, f, p):
        total = w + f
        positive = total > 0
        return jnp.where(positive, (w * a + f * p) / jnp.where(positive, total, 1.0), p)

    merged = jax.tree_util.tree_map(lambda w, f: w + f, importance, fisher)
    return merged, jax.tree_util.tree_map(weighted_anchor, importance, anchor, fisher, params)


def consolidate_si(importance: PyTree, omega: PyTree, params: PyTree, task_start: PyTree, *,
                   xi: float = 0.1) -> tuple[PyTree, PyTree, PyTree]:
    """SI end of task: ``Ω ← Ω + max(ω, 0) / ((θ_end - θ_start)² + ξ)``, ``ω ← 0``, ``θ* ← θ``.

    DECISION: the increment is clamped at 0. ω < 0 means the parameter's net movement raised
    the task loss (possible with momentum/Adam or noise); a negative importance would reward
    moving away from the anchor and make the penalty unbounded below.

    Args:
      importance: Ω so far; omega: the path integral of this task; params: θ_end;
      task_start: θ at the beginning of the task (the previous anchor); xi: damping ξ.

    Returns:
      (importance, zeroed omega, new anchor = params).
    """
    updated = jax.tree_util.tree_map(
        lambda w, o, end, start: w + jnp.maximum(o, 0.0) / (jnp.square(end - start) + xi),
        importance, omega, params, task_start)
    return updated, jax.tree_util.tree_map(jnp.zeros_like, omega), params


def consolidate_mas(importance: PyTree, sensitivity: PyTree, params: PyTree, *,
                    alpha: float = 0.5) -> tuple[PyTree, PyTree]:
    """MAS end of task (FACIL): ``Ω ← αΩ + (1 - α)Ω_new``, ``θ* ← θ``.

    As in FACIL the first task also halves Ω_new (Ω starts at 0); λ absorbs the factor.
    """
    merged = jax.tree_util.tree_map(lambda w, s: alpha * w + (1.0 - alpha) * s,
                                    importance, sensitivity)
    return merged, params
