"""MiDaS-style progressive decoder of the AVSBench model (spec §3.4).

    RCU(x)       = relu(x) + conv2(relu(conv1(relu(x))))         3x3 convs C->C with bias
    FFB(x0, x1)  = up2(RCU2(x0 + RCU1(x1))),  FFB(x0) = up2(RCU2(x0))
    D4 = FFB4(F3), D3 = FFB3(D4, F2), D2 = FFB2(D3, F1), D1 = FFB1(D2, F0), each × frame mask
    logits = Conv1x1(relu(Conv3x3(up2'(Conv3x3(D1))))) × frame mask

``up2`` is bilinear ×2 with align_corners=True, ``up2'`` with align_corners=False (see
``upsample.py``). The RCU form replicates a quirk of the reference: its ``nn.ReLU(inplace=True)``
overwrites the input, so the residual branch adds relu(x), not x. The head widths are
(128, 32) in AVSBench; they are a field here so small models can scale them.

Submodule names follow the PyTorch model (``path4``..``path1``, ``resConfUnit1/2``, ``conv1/2``,
``output_conv_0/2/4`` = the convs at indices 0, 2, 4 of the ``output_conv`` Sequential).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jax_cavs.models.heads.upsample import upsample2x_align_corners, upsample2x_half_pixel
from jax_cavs.models.initializers import torch_default_bias_init, torch_default_kernel_init


def _torch_conv(features: int, kernel: int, in_channels: int, name: str, dtype: Any) -> nn.Conv:
    """Stride-1 conv with 'same' PyTorch padding (kernel // 2), bias, PyTorch default init."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                   kernel_init=torch_default_kernel_init,
                   bias_init=torch_default_bias_init(kernel * kernel * in_channels),
                   dtype=dtype, name=name)


def _mask_frames(x: jnp.ndarray, frame_mask: jnp.ndarray) -> jnp.ndarray:
    """[B, h, w, C] × [B] mask."""
    return x * frame_mask.astype(x.dtype)[:, None, None, None]


class ResidualConvUnit(nn.Module):
    """RCU with the reference's in-place-ReLU semantics: [B, h, w, C] -> [B, h, w, C]."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        x = nn.relu(x)  # in PyTorch this relu overwrites x, so the skip below adds relu(x)
        out = _torch_conv(c, 3, c, "conv1", self.dtype)(x)
        out = _torch_conv(c, 3, c, "conv2", self.dtype)(nn.relu(out))
        return out + x


class FeatureFusionBlock(nn.Module):
    """FFB(x0[, x1]) = up2(RCU2(x0 [+ RCU1(x1)])): [B, h, w, C] (×2) -> [B, 2h, 2w, C]."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x0: jnp.ndarray, x1: jnp.ndarray | None = None) -> jnp.ndarray:
        out = x0
        if x1 is not None:
            if x1.shape != x0.shape:
                raise ValueError(f"FeatureFusionBlock: the skip input {x1.shape} does not match the "
                                 f"upsampled path {x0.shape}; the image side must be a multiple "
                                 f"of 32.")
            out = out + ResidualConvUnit(self.dtype, name="resConfUnit1")(x1)
        out = ResidualConvUnit(self.dtype, name="resConfUnit2")(out)
        return upsample2x_align_corners(out)


class ProgressiveDecoder(nn.Module):
    """Fuses the four neck/TPAVI maps coarse-to-fine and predicts per-pixel class logits.

    Attributes:
        num_classes: K (including background).
        head_channels: widths of the head's two 3x3 convs ((128, 32) in AVSBench).
        dtype: compute dtype (parameters stay float32).
    """
    num_classes: int
    head_channels: Sequence[int] = (128, 32)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, fused: Sequence[jnp.ndarray], frame_mask: jnp.ndarray
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Decodes.

        Args:
            fused: (F0, F1, F2, F3), [B, H/4, W/4, C] .. [B, H/32, W/32, C] (B = N·T frames).
            frame_mask: [B], 1 for real frames, 0 for padding.

        Returns:
            logits: [B, H, W, K], zero on masked frames.
            d1: [B, H/2, W/2, C], the last fusion output (masked).
        """
        f0, f1, f2, f3 = fused
        d = _mask_frames(FeatureFusionBlock(self.dtype, name="path4")(f3), frame_mask)
        for name, skip in (("path3", f2), ("path2", f1), ("path1", f0)):
            d = _mask_frames(FeatureFusionBlock(self.dtype, name=name)(d, skip), frame_mask)
        mid, low = self.head_channels
        x = _torch_conv(mid, 3, d.shape[-1], "output_conv_0", self.dtype)(d)
        x = upsample2x_half_pixel(x)
        x = nn.relu(_torch_conv(low, 3, mid, "output_conv_2", self.dtype)(x))
        logits = _torch_conv(self.num_classes, 1, low, "output_conv_4", self.dtype)(x)
        return _mask_frames(logits, frame_mask), d
