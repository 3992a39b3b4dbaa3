"""PLOP's Local POD feature distillation on channels-last maps (spec_cavs §5.6(b)).

Reference: [PLOP:train.py ``features_distillation`` with ``collapse_channels="local"``,
``_local_pod``], PLOP settings ``pod_factor=0.01``, ``pod_logits=True``,
``pod_options={"switch": {"after": {"extra_channels": "sum", "factor": 0.0005,
"type": "local"}}}``, ``prepro="pow"``, ``use_pod_schedule=True``, no normalisation.

For every distilled pair (teacher map a, student map b) of shape [B, H, W, C]:

1. the logits entry (the last one) folds the student's new-class channels into background
   ("sum"): ``b_0 <- b_0 + Σ_{c∈current} b_c`` and keeps only the old channels;
2. both maps are squared (``prepro="pow"``);
3. each is embedded by ``local_pod_embedding`` (widths/heights pooled over a 1x1, 2x2 and
   4x4 grid of regions);
4. the layer loss is the Frobenius norm of the embedding difference averaged over B, times
   the layer weight (0.01 for features, 0.0005 for the logits) and ``sqrt(K_t / |C_t|)``;
5. the POD loss is the sum of layer losses divided by the number of entries.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jax_cavs.cl.reduce import masked_mean, num_classes_in


def local_pod_embedding(x: jnp.ndarray, scales: Sequence[int] = (1, 2, 4)) -> jnp.ndarray:
    """PLOP's Local POD embedding of a square map, exactly as ``_local_pod``.

    For each scale s the region side is ``k = W // s`` (the width is used for both axes;
    trailing rows/columns that do not fill a region are dropped, e.g. 7 // 4 = 1). For each
    region (i, j), row-major, the embedding appends the mean over the width ([B, C, k] in
    PLOP's layout, flattened channel-major) and then the mean over the height.

    Args:
      x: float [B, H, W, C] with H == W >= max(scales).
      scales: grid sizes.

    Returns:
      float [B, D] with D = Σ_s s² · 2 · C · (W // s).
    """
    batch, height, width, _ = x.shape
    if height != width:
        raise ValueError(f"local_pod_embedding: PLOP's Local POD assumes square maps, got "
                         f"H={height}, W={width}; distil a square map (crop or resize it).")
    if width < max(scales):
        raise ValueError(f"local_pod_embedding: map width {width} is smaller than the "
                         f"largest scale {max(scales)}; drop that scale or use a larger map.")
    parts = []
    for scale in scales:
        k = width // scale
        # regions[b, i, r, j, c, ch] = x[b, i*k + r, j*k + c, ch] for the s x s grid of k x k.
        regions = x[:, :scale * k, :scale * k, :].reshape(batch, scale, k, scale, k, -1)
        width_pool = jnp.mean(regions, axis=4).transpose(0, 1, 3, 4, 2)   # [B, i, j, C, rows]
        height_pool = jnp.mean(regions, axis=2).transpose(0, 1, 2, 4, 3)  # [B, i, j, C, cols]
        # PLOP appends, region by region (row-major), the width pool then the height pool,
        # each flattened channel-major from its [B, C, k] layout.
        parts.append(jnp.stack([width_pool, height_pool], axis=3).reshape(batch, -1))
    return jnp.concatenate(parts, axis=1)


def _safe_norm(x: jnp.ndarray) -> jnp.ndarray:
    """L2 norm over the last axis with gradient 0 (not NaN) at 0, like ``torch.norm``."""
    squared = jnp.sum(jnp.square(x), axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def pod_layer_distance(old_map: jnp.ndarray, new_map: jnp.ndarray,
                       scales: Sequence[int] = (1, 2, 4),
                       sample_weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """``mean_B ‖e(a²) - e(b²)‖_2`` for one pair of [B, H, W, C] maps (steps 2-4, unweighted).

    ``sample_weights`` (float [B], optional) turns the mean over B into a weighted mean
    (DECISION: padded frames of the AVS clips get weight 0; ``None`` is PLOP's plain mean).
    """
    if old_map.shape != new_map.shape:
        raise ValueError(f"pod_layer_distance: teacher map {old_map.shape} and student map "
                         f"{new_map.shape} must have the same shape.")
    old_embedding = local_pod_embedding(jnp.square(jax.lax.stop_gradient(old_map)), scales)
    new_embedding = local_pod_embedding(jnp.square(new_map), scales)
    distances = _safe_norm(old_embedding - new_embedding)  # [B]
    if sample_weights is None:
        return jnp.mean(distances)
    return masked_mean(distances, sample_weights)


def fold_new_logits(old_logits: jnp.ndarray, new_logits: jnp.ndarray, old: jnp.ndarray,
                    current: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """PLOP's ``extra_channels="sum"`` on channels-last logits [..., K].

    Returns (teacher, student) restricted to the old channels (others set to 0, which adds
    nothing to the POD distance), the student's background channel being
    ``b_0 + Σ_{c∈current} b_c``.
    """
    new_background = new_logits[..., 0] + jnp.sum(jnp.where(current, new_logits, 0.0), axis=-1)
    student = jnp.where(old, new_logits, 0.0).at[..., 0].set(new_background)
    teacher = jnp.where(old, old_logits, 0.0)
    return teacher, student


def pod_loss(old_features: Sequence[jnp.ndarray], new_features: Sequence[jnp.ndarray], *,
             old_logits: jnp.ndarray, new_logits: jnp.ndarray, old: jnp.ndarray,
             current: jnp.ndarray, seen: jnp.ndarray, feature_weight: float = 0.01,
             logits_weight: float = 0.0005, scales: Sequence[int] = (1, 2, 4),
             use_schedule: bool = True, sample_weights: jnp.ndarray | None = None,
             fit_scales: bool = False) -> jnp.ndarray:
    """PLOP's total Local POD loss over feature maps plus the (small) logits entry.

    Args:
      old_features, new_features: equal-length sequences of float [B, h, w, c] maps (teacher,
        student), e.g. the 4 backbone stages and the decoder map.
      old_logits, new_logits: float [B, h, w, K] logits before upsampling (the last entry).
      old, current, seen: bool [K] class masks.
      feature_weight: λ of the feature entries (``pod_factor`` = 0.01).
      logits_weight: λ of the logits entry (the "after" switch factor = 0.0005).
      scales: Local POD grid sizes.
      use_schedule: multiply by ``sqrt(K_t / |C_t|)`` with K_t = |seen|, |C_t| = |current|
        (``use_pod_schedule``); |C_t| is floored at 1 so an empty ``current`` (task 0, no
        teacher) stays finite.
      sample_weights: optional float [B] weights of the mean over B (see
        ``pod_layer_distance``).
      fit_scales: per entry, drop the scales larger than the map width (their regions would
        be empty; PLOP's maps, >= 7 px at 224, never need it, the AVS model's deepest maps at
        32-64 px are 1-2 px). False keeps ``local_pod_embedding``'s error on such maps.

    Returns:
      float32 scalar ``Σ_l λ_l · schedule · ℓ_l / L`` with L = len(features) + 1.
    """
    if len(old_features) != len(new_features):
        raise ValueError(f"pod_loss: {len(old_features)} teacher feature maps but "
                         f"{len(new_features)} student maps; pass matching lists.")

    def entry_scales(x: jnp.ndarray) -> tuple[int, ...]:
        return tuple(s for s in scales if s <= x.shape[2]) if fit_scales else tuple(scales)

    teacher_logits, student_logits = fold_new_logits(old_logits, new_logits, old, current)
    terms = [feature_weight * pod_layer_distance(a, b, entry_scales(a), sample_weights)
             for a, b in zip(old_features, new_features)]
    terms.append(logits_weight * pod_layer_distance(
        teacher_logits, student_logits, entry_scales(teacher_logits), sample_weights))
    schedule = 1.0
    if use_schedule:
        schedule = jnp.sqrt(num_classes_in(seen) / jnp.maximum(num_classes_in(current), 1.0))
    return schedule * jnp.sum(jnp.stack(terms)) / len(terms)
