"""Distillation terms between the frozen old model (teacher) and the learner (student).

Channels-last logits ``[..., H, W, K]`` cover all K classes of the scenario; the teacher's
live channels are ``old`` (classes learned before the current task, incl. background, the
spec's C_o channels), the student's are ``seen``. Per-pixel terms return ``[..., H, W]`` maps
to be reduced with ``jax_cavs.cl.reduce.masked_mean`` (mean over all pixels, ignored
ones included: distillation does not look at labels). Notation of spec_cavs §5: z = student
logits, q = teacher logits, C_o = |old|.

Terms:
* ``knowledge_distillation``: LwF output KD (spec §5.2, [PLOP/MiB:utils/loss.py
  KnowledgeDistillationLoss]).
* ``unbiased_knowledge_distillation``: MiB's UNKD (spec §5.5,
  [UnbiasedKnowledgeDistillationLoss]).
* ``sigmoid_distillation``: LwF-MC/iCaRL BCE towards sigmoid(q) (spec §5.4).
* ``feature_mse``: ILT's feature distillation (spec §5.3, ``nn.MSELoss()``).
* ``init_balanced``: MiB's initialisation of new-class classifier rows (spec §4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_cavs.cl.reduce import (masked_log_softmax, masked_logsumexp, masked_mean,
                                    masked_softmax, num_classes_in)


def knowledge_distillation(logits: jnp.ndarray, old_logits: jnp.ndarray, old: jnp.ndarray,
                           alpha: float = 1.0) -> jnp.ndarray:
    """LwF output distillation over the old channels, per pixel.

    ``-(1/C_o) Σ_{c∈old} softmax_old(α q)_c · log softmax_old(z)_c``: the student's
    log-softmax runs over the old channels only (the reference narrows z to its first C_o
    channels). ``alpha`` multiplies the teacher logits only, as coded (α = 1 in LwF/ILT).

    Args:
      logits: float [..., H, W, K] student logits.
      old_logits: float [..., H, W, K] teacher logits (no gradient is taken through them).
      old: bool [K].
      alpha: teacher temperature factor.

    Returns:
      float [..., H, W].
    """
    teacher = masked_softmax(alpha * jax.lax.stop_gradient(old_logits), old)
    student = masked_log_softmax(logits, old)
    return -jnp.sum(teacher * student, axis=-1) / num_classes_in(old)


def unbiased_knowledge_distillation(logits: jnp.ndarray, old_logits: jnp.ndarray,
                                    seen: jnp.ndarray, old: jnp.ndarray,
                                    alpha: float = 1.0) -> jnp.ndarray:
    """MiB's unbiased knowledge distillation (UNKD), per pixel (spec §5.5).

    The teacher's background is matched by the student's background *plus all new classes*::

        t          = softmax_old(α q)
        log p^_bg  = logsumexp_{{0} ∪ (seen \\ old)}(z) - logsumexp_{seen}(z)
        log p^_c   = z_c - logsumexp_{seen}(z)                 c ∈ old \\ {0}
        loss       = -(1/C_o) [t_0 log p^_bg + Σ_{c∈old\\{0}} t_c log p^_c]

    Args:
      logits, old_logits: float [..., H, W, K].
      seen, old: bool [K], ``old`` ⊆ ``seen``, background in ``old``.
      alpha: teacher temperature factor (multiplies q only, as coded).

    Returns:
      float [..., H, W].
    """
    background = jnp.zeros_like(old).at[0].set(True)
    teacher = masked_softmax(alpha * jax.lax.stop_gradient(old_logits), old)
    log_seen = masked_logsumexp(logits, seen)
    log_background = masked_logsumexp(logits, background | (seen & ~old)) - log_seen
    old_foreground = old & ~background
    log_foreground = jnp.where(old_foreground, logits - log_seen[..., None], 0.0)
    weighted = teacher[..., 0] * log_background + jnp.sum(
        jnp.where(old_foreground, teacher, 0.0) * log_foreground, axis=-1)
    return -weighted / num_classes_in(old)


def sigmoid_distillation(logits: jnp.ndarray, old_logits: jnp.ndarray,
                         old: jnp.ndarray) -> jnp.ndarray:
    """LwF-MC / iCaRL distillation: ``Σ_{c∈old} BCEWithLogits(z_c, sigmoid(q_c))`` per pixel.

    The reference computes ``icarl · C_o · mean_{B,C_o,H,W} BCE``; the mean over pixels of
    this channel sum equals ``C_o · mean_{B,C_o,H,W}``, so the strategy multiplies
    ``masked_mean`` of this map by ``icarl_importance`` (10) only (spec §5.4).

    Args:
      logits, old_logits: float [..., H, W, K].
      old: bool [K].

    Returns:
      float [..., H, W].
    """
    targets = jax.nn.sigmoid(jax.lax.stop_gradient(old_logits))
    per_class = jax.nn.softplus(logits) - logits * targets
    return jnp.sum(jnp.where(old, per_class, 0.0), axis=-1)


def feature_mse(old_features: jnp.ndarray, new_features: jnp.ndarray,
                sample_weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """ILT feature distillation: mean squared difference (PyTorch ``nn.MSELoss()``).

    Args:
      old_features: float [B, ...] teacher feature map (e.g. layer4, [N*T, 7, 7, 2048]).
      new_features: float [B, ...] student feature map, same shape.
      sample_weights: optional float [B]; when given, the per-sample mean squared errors are
        averaged with these weights (DECISION: lets padded frames of the AVS clips, weight
        0, drop out; ``None`` is exactly ``nn.MSELoss()``).

    Returns:
      float32 scalar.
    """
    if old_features.shape != new_features.shape:
        raise ValueError(f"feature_mse: teacher features {old_features.shape} and student "
                         f"features {new_features.shape} must have the same shape.")
    squared = jnp.square(new_features - jax.lax.stop_gradient(old_features))
    if sample_weights is None:
        return jnp.mean(squared)
    per_sample = jnp.mean(squared.reshape(squared.shape[0], -1), axis=-1)
    return masked_mean(per_sample, sample_weights)


def init_balanced(kernel: jnp.ndarray, bias: jnp.ndarray, current: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """MiB's balanced initialisation of the new classes' classifier (spec §4).

    At the start of task t ≥ 1 every new class copies the background classifier and both the
    new classes' and the background's bias become ``b_bg - ln(|C_t| + 1)``
    ([PLOP:segmentation_module.py init_new_classifier]), so that the new model's background
    probability initially equals the old one's split evenly over bg and the |C_t| classes.

    Args:
      kernel: float [..., K] weight of the final 1x1 conv (e.g. [1, 1, C, K]).
      bias: float [K].
      current: bool [K] classes of the current task (never background).

    Returns:
      (kernel, bias) with the same shapes and dtypes.
    """
    shift = jnp.log(num_classes_in(current) + 1.0).astype(bias.dtype)
    new_bias = bias[0] - shift
    kernel = jnp.where(current, kernel[..., :1], kernel)
    bias = jnp.where(current, new_bias, bias).at[0].set(new_bias)
    return kernel, bias
