"""CAVS's per-clip class statistics for replay selection (``CAVSProblem.class_statistics``,
used by ``cl.selection``).

Membership: a clip belongs to class c when one annotated pixel of the labels the pipeline
decodes for the current task (current classes kept, everything else background, unannotated
frames 255) is labelled c (``class_pixels``).

Feature of a clip for class c (herding; DECISION): the model's last feature map before the
classifier, the decoder output D1 (``features["decoder"]``, [N·T, H/2, W/2, C], the analogue of
iCaRL's penultimate layer), averaged over the pixels of class c in the clip's annotated
frames. Labels are brought to D1's resolution by average-pooling their one-hot encoding, so a
boundary pixel counts fractionally (``class_feature_sums``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HERDING_FEATURE = "decoder"


def class_pixels(labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
    """float32 [N, K]: pixels of each class per clip; labels int [N, T, H, W] (255 ignored)."""
    return jnp.sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), axis=(1, 2, 3))


def class_feature_sums(features: jnp.ndarray, labels: jnp.ndarray, num_classes: int
                       ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per clip and class, the label-weighted sum of a feature map and the total weight.

    Args:
      features: float [N·T, h, w, C], a feature map at a resolution dividing the labels'.
      labels: int [N, T, H, W] (255 and out-of-range labels weigh 0).
      num_classes: K.

    Returns:
      (sums float32 [N, K, C], weights float32 [N, K]); the weights are the one-hot labels
      average-pooled to h x w, summed over the clip's frames.
    """
    n, t, height, width = labels.shape
    h, w = features.shape[1:3]
    if height % h or width % w:
        raise ValueError(f"feature map {h}x{w} does not divide the label map {height}x{width}.")
    one_hot = jax.nn.one_hot(labels.reshape(n * t, height, width), num_classes,
                             dtype=jnp.float32)
    pooled = one_hot.reshape(n * t, h, height // h, w, width // w, num_classes).mean((2, 4))
    sums = jnp.einsum("bhwk,bhwc->bkc", pooled, features.astype(jnp.float32))
    weights = jnp.sum(pooled, axis=(1, 2))
    return (sums.reshape(n, t, num_classes, -1).sum(1),
            weights.reshape(n, t, num_classes).sum(1))
