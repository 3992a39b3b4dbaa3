"""Masked reductions shared by every loss term.

Two kinds of masks appear in the losses (HELPER_BRIEF "Shared contracts"):

* **pixel masks** select the pixels a per-pixel loss map is averaged over. ``masked_mean``
  implements the MiB/PLOP reduction "``.mean()`` over all B·H·W pixels" [PLOP:train.py,
  MiB:train.py, spec_cavs §5]: ignored pixels (label 255) are *counted in the denominator*
  and contribute 0 to the numerator because the loss map is already 0 there; only pixels of
  unannotated or padded frames are removed (their weight is 0).
* **class masks** ``bool[K]`` (``seen`` / ``old`` / ``current``) select the live channels of
  channels-last logits ``[..., K]``. ``masked_logsumexp`` and ``masked_log_softmax`` replace
  the channel slices ``z[:, :C_o]`` of the PyTorch code. Channels outside the mask are
  excluded from the normaliser and receive exactly zero gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(loss_map: jnp.ndarray, pixel_mask: jnp.ndarray) -> jnp.ndarray:
    """Weighted mean of a per-pixel (or per-sample) loss map.

    Args:
      loss_map: float [..., H, W] per-pixel loss (0 on ignored pixels), or any float array
        such as per-sample losses [B] with per-sample weights.
      pixel_mask: float or bool, broadcastable to ``loss_map`` (e.g. [N, T, 1, 1] marking
        annotated frames of real clips, or a full [N, T, H, W] map).

    Returns:
      float32 scalar ``sum(loss_map * w) / sum(w)`` with ``w`` the broadcast mask; 0 (with a
      zero, finite gradient) when the mask is empty.
    """
    weights = jnp.broadcast_to(pixel_mask, loss_map.shape).astype(loss_map.dtype)
    total = jnp.sum(weights)
    safe_total = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum(loss_map * weights) / safe_total, 0.0)


def masked_logsumexp(logits: jnp.ndarray, class_mask: jnp.ndarray) -> jnp.ndarray:
    """``log Σ_{c: mask_c} exp(z_c)`` over the last axis.

    Args:
      logits: float [..., K].
      class_mask: bool [K] (or broadcastable to ``logits``); must select at least one class.

    Returns:
      float [...]. Masked-out channels get exactly zero gradient.
    """
    return jax.nn.logsumexp(jnp.where(class_mask, logits, -jnp.inf), axis=-1)


def masked_log_softmax(logits: jnp.ndarray, class_mask: jnp.ndarray) -> jnp.ndarray:
    """Log-softmax restricted to the channels of ``class_mask``.

    Args:
      logits: float [..., K].
      class_mask: bool [K] (or broadcastable to ``logits``); must select at least one class.

    Returns:
      float [..., K]: ``z_c - logsumexp_{mask}(z)`` on masked-in channels and **0** (not
      -inf) elsewhere, so that products with zero target probabilities stay finite.
    """
    log_probs = logits - masked_logsumexp(logits, class_mask)[..., None]
    return jnp.where(class_mask, log_probs, 0.0)


def masked_softmax(logits: jnp.ndarray, class_mask: jnp.ndarray) -> jnp.ndarray:
    """Softmax restricted to ``class_mask`` (0 on masked-out channels); shapes as above."""
    return jnp.where(class_mask, jnp.exp(masked_log_softmax(logits, class_mask)), 0.0)


def num_classes_in(class_mask: jnp.ndarray) -> jnp.ndarray:
    """float32 scalar: how many classes a ``bool[K]`` mask selects (the spec's C_o, K_t...)."""
    return jnp.sum(class_mask.astype(jnp.float32))
