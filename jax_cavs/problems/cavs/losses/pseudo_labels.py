"""PLOP's entropy-based pseudo-labels with static shapes (spec_cavs §5.6(a), §6.1).

Reference: [PLOP:train.py ``entropy``, ``Trainer.find_median(mode="entropy")`` and the
``pseudo_labeling == "entropy"`` branch of ``Trainer.train``], threshold 0.001,
``classif_adaptive_factor=True``.

Pipeline for task t >= 1 (old model frozen):

1. before training, ``update_histogram`` runs over the task's batches (jit-able, one call per
   batch) and accumulates, for every background pixel (``y == 0``), a histogram of the
   normalised entropy per pseudo-class (old model's argmax), 100 bins over [0, 1];
2. ``median_thresholds`` turns the histogram into one threshold per class with PLOP's
   approximate-median loop, replicated exactly (host-side numpy, once per task);
3. in every train step ``apply_pseudo_labels`` relabels background pixels with the old model's
   prediction when its entropy is below the class threshold, marks the others 255, and returns
   the per-image adaptive factor κ that scales the cross-entropy.

Entropy as coded: ``ent(p) = -(1/ln C_o) · mean_{c∈old} p_c ln(p_c + 1e-8)`` with p the old
model's softmax over its C_o channels; it is a *mean* over channels, so the coded value carries
an extra 1/C_o. It is then divided by ``ln K_t`` (K_t = |seen|, PLOP's ``max_entropy``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.data import IGNORE_INDEX
from jax_cavs.cl.reduce import masked_softmax, num_classes_in

NUM_BINS = 100
BASE_THRESHOLD = 0.001
BG_MASK_MODES = ("old", "background")


def normalized_entropy(old_logits: jnp.ndarray, old: jnp.ndarray, seen: jnp.ndarray
                       ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """PLOP's normalised entropy and pseudo-label of the old model, per pixel.

    Args:
      old_logits: float [..., H, W, K] teacher logits; only the ``old`` channels are used.
      old: bool [K] the teacher's classes (C_o of them, background included).
      seen: bool [K] the current task's classes (K_t = |seen|).

    Returns:
      (u float [..., H, W], pseudo int32 [..., H, W]): ``ent(p) / ln K_t`` and
      ``argmax_{c∈old} p_c``.
    """
    probs = masked_softmax(jax.lax.stop_gradient(old_logits), old)
    num_old = num_classes_in(old)
    plogp = jnp.where(old, probs * jnp.log(probs + 1e-8), 0.0)
    entropy = -jnp.sum(plogp, axis=-1) / num_old / jnp.log(num_old + 1e-8)
    pseudo = jnp.argmax(jnp.where(old, probs, -1.0), axis=-1).astype(jnp.int32)
    return entropy / jnp.log(num_classes_in(seen)), pseudo


def update_histogram(histogram: jnp.ndarray, labels: jnp.ndarray, old_logits: jnp.ndarray,
                     old: jnp.ndarray, seen: jnp.ndarray,
                     pixel_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Adds one batch to the per-pseudo-class entropy histogram (``find_median``'s loop body).

    Every pixel with ``y == 0`` (as in the reference's ``find_median``, whatever the mode used
    in training) and nonzero ``pixel_mask`` is counted in bin ``min(trunc(u · nb), nb - 1)`` of
    row ``pseudo``.

    DECISION: ``pixel_mask`` (e.g. annotated frames of real clips, broadcastable to
    ``labels``) keeps padded frames, whose all-zero labels would otherwise count as
    background, out of the statistics; pass it 0 on memory clips to compute thresholds on the
    new task's data only (spec §6.1 DECISION).

    Args:
      histogram: int [K, nb] running counts. int32 holds 2^31 - 1 per bin; to accumulate more
        pixels (AVSBench-scale tasks have ~10^9), add the per-batch result to an int64 numpy
        array on the host (``update_histogram(zeros, ...)`` gives the batch counts).
      labels: int [..., H, W] task labels (255 = ignore).
      old_logits: float [..., H, W, K].
      old, seen: bool [K].
      pixel_mask: optional float/bool broadcastable to ``labels``.

    Returns:
      ``histogram`` plus this batch's counts, same shape and dtype.
    """
    num_classes, num_bins = histogram.shape
    entropy, pseudo = normalized_entropy(old_logits, old, seen)
    # torch's ``.long()`` truncates toward zero; u >= 0 up to rounding, so clip both ends.
    bins = jnp.clip((entropy * num_bins).astype(jnp.int32), 0, num_bins - 1)
    counted = labels == 0
    if pixel_mask is not None:
        counted &= jnp.broadcast_to(pixel_mask, labels.shape) != 0
    counts = jax.ops.segment_sum(counted.astype(histogram.dtype).ravel(),
                                 (pseudo * num_bins + bins).ravel(),
                                 num_segments=num_classes * num_bins)
    return histogram + counts.reshape(num_classes, num_bins)


def median_thresholds(histogram: np.ndarray, base_threshold: float = BASE_THRESHOLD
                      ) -> np.ndarray:
    """Per-class entropy thresholds from the histogram, replicating PLOP's ``find_median``.

    For each class c with ``n_c = Σ_b h[c, b] > 0`` the reference runs::

        half = n_c / 2; running = 0
        for b in range(nb):
            lower = b / nb; idx = int(lower * nb)
            if running <= half <= running + h[c, idx]: break
            running += lower * nb                   # (sic) adds the bin index, not the count
        median = lower + (half - running) / h[c, idx] * (1 / nb)

    and ``thr_c = max(median_c, base_threshold)``; classes with ``n_c = 0`` get
    ``max(0, base) = base``. Replicated quirks: the running sum adds bin *indices*;
    ``int(b / 100 * 100)`` is 28, 56, 57 for b = 29, 57, 58 in float64, so bins 29 and 58 are
    never inspected; ``half``, the comparisons and the median are float32 arithmetic as in
    torch; a loop that never breaks uses the last bin. A zero count in the chosen bin gives,
    as in the reference, NaN (0/0: every pixel of that pseudo-class is rejected), +inf
    (every pixel accepted) or -inf (the base threshold); with PLOP's doubly normalised
    entropy almost all mass sits in bin 0 and none of these occurs in practice.

    Args:
      histogram: int [K, nb] counts (numpy or jax, any integer dtype; int64 recommended).
      base_threshold: PLOP's ``threshold`` (0.001).

    Returns:
      float32 numpy [K].
    """
    counts = np.asarray(histogram).astype(np.int64)
    if counts.ndim != 2:
        raise ValueError(f"median_thresholds: histogram must be [K, bins], got "
                         f"{counts.shape}.")
    num_bins = counts.shape[1]
    # The reference's loop variables, computed with the same float64 Python arithmetic.
    lower_borders = np.array([b / num_bins for b in range(num_bins)])
    steps = np.array([lower * num_bins for lower in lower_borders])
    bin_index = np.array([int(step) for step in steps])
    running_after = np.cumsum(steps)  # float64, summed left to right like the Python loop
    # Torch evaluates the comparisons and the median in float32 (the counts' true division).
    running_before = np.concatenate([[0.0], running_after[:-1]]).astype(np.float32)

    thresholds = np.zeros(counts.shape[0], np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in np.flatnonzero(counts.sum(axis=1) > 0):
            half = np.float32(counts[c].sum()) / np.float32(2)
            chosen = counts[c, bin_index].astype(np.float32)
            stop = (half >= running_before) & (half <= running_before + chosen)
            if stop.any():
                b = int(np.argmax(stop))
                running = running_before[b]
            else:  # the loop ran to its end: last bin, running sum over all bins
                b = num_bins - 1
                running = np.float32(running_after[-1])
            thresholds[c] = (np.float32(lower_borders[b])
                             + ((half - running) / chosen[b]) * np.float32(1.0 / num_bins))
    base = np.float32(base_threshold)
    return np.where(base > thresholds, base, thresholds).astype(np.float32)


def background_mask(labels: jnp.ndarray, old: jnp.ndarray, is_memory: jnp.ndarray,
                    bg_mask_mode: str = "old") -> jnp.ndarray:
    """Pixels eligible for pseudo-labelling, bool [..., H, W].

    ``"old"``: PLOP's ``y < C_o``, i.e. labels of old classes or background (on new-task data
    old classes were already masked to 0, so this is ``y == 0`` there). ``"background"``:
    ``y == 0``. Memory clips (``is_memory``, bool [B] over the leading axis) always use
    ``y == 0``: their labels carry true old classes that must not be overwritten (spec §6.1).
    """
    if bg_mask_mode not in BG_MASK_MODES:
        raise ValueError(f"bg_mask_mode={bg_mask_mode!r} is not one of {BG_MASK_MODES}.")
    is_background = labels == 0
    if bg_mask_mode == "background":
        return is_background
    in_range = (labels >= 0) & (labels < old.shape[-1])
    is_old = in_range & jnp.asarray(old)[jnp.where(in_range, labels, 0)]
    is_memory = jnp.asarray(is_memory)
    memory = is_memory.reshape(is_memory.shape + (1,) * (labels.ndim - is_memory.ndim))
    return jnp.where(memory, is_background, is_old)


def apply_pseudo_labels(labels: jnp.ndarray, old_logits: jnp.ndarray,
                        thresholds: jnp.ndarray, old: jnp.ndarray, seen: jnp.ndarray,
                        is_memory: jnp.ndarray, bg_mask_mode: str = "old",
                        ignore_index: int = IGNORE_INDEX
                        ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Relabels background pixels with confident old-model predictions (PLOP "entropy").

    With bg = ``background_mask(...)``, u and pseudo from ``normalized_entropy`` and
    valid = ``u < thresholds[pseudo]``: ``y[bg & valid] = pseudo``, ``y[bg & ~valid] =
    ignore_index``. The adaptive factor is ``κ = #(bg & valid) / (#bg + 1e-6)`` per image
    (over H, W); the strategy multiplies the per-pixel CE of that image by it, new-class pixels
    included.

    Args:
      labels: int [B, ..., H, W] task labels.
      old_logits: float [B, ..., H, W, K] teacher logits.
      thresholds: float [K] from ``median_thresholds``.
      old, seen: bool [K].
      is_memory: bool [B], replayed clips.
      bg_mask_mode: ``"old"`` (PLOP) or ``"background"``, see ``background_mask``.
      ignore_index: label written on rejected pixels.

    Returns:
      (labels int32 [B, ..., H, W], κ float32 [B, ...]).
    """
    entropy, pseudo = normalized_entropy(old_logits, old, seen)
    background = background_mask(labels, old, is_memory, bg_mask_mode)
    valid = entropy < jnp.asarray(thresholds)[pseudo]
    confident = background & valid
    new_labels = jnp.where(confident, pseudo,
                           jnp.where(background, ignore_index, labels)).astype(jnp.int32)
    numerator = jnp.sum(confident.astype(jnp.float32), axis=(-2, -1))
    denominator = jnp.sum(background.astype(jnp.float32), axis=(-2, -1))
    return new_labels, numerator / (denominator + 1e-6)
