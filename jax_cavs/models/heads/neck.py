"""AVSBench "ASPP" neck: a plain sum of dilated 3x3 convs per encoder stage (spec §3.2).

AVSBench ``Classifier_Module``: F = Σ_{d ∈ dilations} Conv3x3(C_in -> C, dilation=d, padding=d,
bias)(x), weights N(0, 0.01), PyTorch-default biases, no BatchNorm and no ReLU, then multiplied by
the per-frame mask (``vid_temporal_mask_flag``) so padded frames carry exact zeros.

On small maps a dilation can reach the map side (d=12 and 18 on the 7x7 map at 224x224, d=18 on
a 2x2 map at 64x64 input); the conv is still well defined with zero padding d, exactly as in
PyTorch, so dilations are kept as configured. But then the kernel rows (columns) off the centre
read only padding: row offset ±d from any of h rows lands outside [0, h) when d >= h. Those taps
add exact zeros, so ``PaddingAwareConv3x3`` leaves them out (a 1x3, 3x1 or 1x1 conv, the last a
plain matmul) with the parameters of the full 3x3 conv: same names, shapes and initialisation.
At paper size this removes ~49 GFLOP per train step that XLA spent reading padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_cavs.models.initializers import normal_init, torch_default_bias_init


class PaddingAwareConv3x3(nn.Module):
    """``nn.Conv(features, (3, 3), kernel_dilation=d, padding=d)`` without the taps that only
    read padding: [B, h, w, C_in] -> [B, h, w, features]. Parameters ``kernel`` [3, 3, C_in,
    features] and ``bias`` [features], as ``nn.Conv``'s."""
    features: int
    dilation: int
    kernel_init: Any
    bias_init: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        d = self.dilation
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        rows = slice(1, 2) if d >= x.shape[1] else slice(0, 3)
        cols = slice(1, 2) if d >= x.shape[2] else slice(0, 3)
        kernel = kernel[rows, cols]
        if kernel.shape[:2] == (1, 1):
            return jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0]) + bias
        pad = [(d, d) if k == 3 else (0, 0) for k in kernel.shape[:2]]
        out = jax.lax.conv_general_dilated(x, kernel, (1, 1), pad, rhs_dilation=(d, d),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + bias


class DilatedSumNeck(nn.Module):
    """One stage of the neck.

    Attributes:
        features: output channels C (256 in AVSBench).
        dilations: dilation (= padding) of each summed 3x3 conv ((3, 6, 12, 18) in AVSBench).
        dtype: compute dtype (parameters stay float32).
    """
    features: int
    dilations: Sequence[int] = (3, 6, 12, 18)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, frame_mask: jnp.ndarray) -> jnp.ndarray:
        """Projects a stage output to C channels.

        Args:
            x: [B, h, w, C_in] encoder stage output (B = N·T frames).
            frame_mask: [B] 1 for real frames, 0 for padding.

        Returns:
            [B, h, w, C], zero on masked frames.
        """
        if not self.dilations:
            raise ValueError("DilatedSumNeck.dilations is empty; give at least one dilation "
                             "(model config field neck_dilations).")
        bias_init = torch_default_bias_init(9 * x.shape[-1])
        out = 0.0
        for index, dilation in enumerate(self.dilations):
            out = out + PaddingAwareConv3x3(self.features, dilation, normal_init(0.01),
                                            bias_init, self.dtype,
                                            name=f"conv2d_list_{index}")(x)
        return out * frame_mask.astype(out.dtype)[:, None, None, None]
