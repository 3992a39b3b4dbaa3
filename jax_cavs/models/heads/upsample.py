"""Bilinear upsampling with PyTorch's two corner conventions (spec §3.4).

The AVSBench decoder uses both ``F.interpolate(..., mode='bilinear', align_corners=True)`` (inside
every fusion block) and ``align_corners=False`` (in the output head). They differ in where output
pixel i samples the input of length n_in when producing n_out pixels:

- align_corners=True: src(i) = i·(n_in − 1)/(n_out − 1) (corners map onto corners; src = 0 when
  n_out = 1). ``jax.image.resize`` has no such mode, so it is written here: per axis, gather the two
  neighbours floor(src) and min(floor(src)+1, n_in−1) and blend (1−λ)·x0 + λ·x1, λ = src − floor(src).
  Indices and weights depend only on static shapes, so they are numpy constants under jit.
- align_corners=False: src(i) = (i + 0.5)·n_in/n_out − 0.5, clamped at 0. For upsampling this is
  exactly ``jax.image.resize(method='bilinear')`` (half-pixel centres; at the border jax
  renormalises the triangle kernel over in-range pixels, which equals PyTorch's clamp).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _resize_axis_align_corners(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
    in_size = x.shape[axis]
    if out_size > 1:
        src = np.arange(out_size, dtype=np.float64) * ((in_size - 1) / (out_size - 1))
    else:
        src = np.zeros((1,), np.float64)
    lower = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    weight_shape = [1] * x.ndim
    weight_shape[axis] = out_size
    frac = jnp.asarray((src - lower).reshape(weight_shape), dtype=x.dtype)
    return (1 - frac) * jnp.take(x, lower, axis=axis) + frac * jnp.take(x, upper, axis=axis)


def resize_bilinear_align_corners(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """``F.interpolate(x, size, mode='bilinear', align_corners=True)``, channels-last.

    Args:
        x: [B, h, w, C].
        size: (H_out, W_out).

    Returns:
        [B, H_out, W_out, C].
    """
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear_align_corners expects [B, h, w, C], got {x.shape}.")
    x = _resize_axis_align_corners(x, 1, size[0])
    return _resize_axis_align_corners(x, 2, size[1])


def upsample2x_align_corners(x: jnp.ndarray) -> jnp.ndarray:
    """[B, h, w, C] -> [B, 2h, 2w, C], bilinear, align_corners=True (the fusion blocks' ``up2``)."""
    return resize_bilinear_align_corners(x, (2 * x.shape[1], 2 * x.shape[2]))


def upsample2x_half_pixel(x: jnp.ndarray) -> jnp.ndarray:
    """[B, h, w, C] -> [B, 2h, 2w, C], bilinear, align_corners=False (the output head's
    ``Interpolate(scale_factor=2)``)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
