"""Bilinear upsampling with PyTorch's two corner conventions (spec §3.4).

The AVSBench decoder uses both ``F.interpolate(..., mode='bilinear', align_corners=True)`` (inside
every fusion block) and ``align_corners=False`` (in the output head). They differ in where output
pixel i samples the input of length n_in when producing n_out pixels:

- align_corners=True: src(i) = i·(n_in − 1)/(n_out − 1) (corners map onto corners; src = 0 when
  n_out = 1). ``jax.image.resize`` has no such mode, so it is written here: per axis, output i
  blends the neighbours floor(src) and min(floor(src)+1, n_in−1) as (1−λ)·x0 + λ·x1,
  λ = src − floor(src). The blend is a static [n_out, n_in] matrix with two non-zeros per row
  (numpy, from the static shapes) applied with one ``dot_general`` per axis: a gather pair and
  its scatter-add transpose would cost far more in the backward pass (18 gathers and 18
  scatter-adds per paper-size step).
- align_corners=False: src(i) = (i + 0.5)·n_in/n_out − 0.5, clamped at 0. For upsampling this is
  exactly ``jax.image.resize(method='bilinear')`` (half-pixel centres; at the border jax
  renormalises the triangle kernel over in-range pixels, which equals PyTorch's clamp).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64: row i holds 1−λ at floor(src(i)) and λ at the next pixel."""
    if out_size > 1:
        src = np.arange(out_size, dtype=np.float64) * ((in_size - 1) / (out_size - 1))
    else:
        src = np.zeros((1,), np.float64)
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = src - lower
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)
    return matrix


def _matrix(in_size: int, out_size: int, dtype) -> jnp.ndarray:
    return jnp.asarray(align_corners_matrix(in_size, out_size), dtype=dtype)


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
    _, h, w, _ = x.shape
    x = jnp.einsum("oh,bhwc->bowc", _matrix(h, size[0], x.dtype), x)
    return jnp.einsum("ow,bhwc->bhoc", _matrix(w, size[1], x.dtype), x)


def upsample2x_align_corners(x: jnp.ndarray) -> jnp.ndarray:
    """[B, h, w, C] -> [B, 2h, 2w, C], bilinear, align_corners=True (the fusion blocks' ``up2``)."""
    return resize_bilinear_align_corners(x, (2 * x.shape[1], 2 * x.shape[2]))


def upsample2x_half_pixel(x: jnp.ndarray) -> jnp.ndarray:
    """[B, h, w, C] -> [B, 2h, 2w, C], bilinear, align_corners=False (the output head's
    ``Interpolate(scale_factor=2)``)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
