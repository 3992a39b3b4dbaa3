"""AVSBench "ASPP" neck: a plain sum of dilated 3x3 convs per encoder stage (spec §3.2).

AVSBench ``Classifier_Module``: F = Σ_{d ∈ dilations} Conv3x3(C_in -> C, dilation=d, padding=d,
bias)(x), weights N(0, 0.01), PyTorch-default biases, no BatchNorm and no ReLU, then multiplied by
the per-frame mask (``vid_temporal_mask_flag``) so padded frames carry exact zeros.

On small maps a dilation can exceed the map (e.g. d=18 on a 2x2 map at 64x64 input); the conv is
still well defined with zero padding d (every off-centre tap reads padding), exactly as in PyTorch,
so dilations are kept as configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jax_cavs.models.initializers import normal_init, torch_default_bias_init


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
            out = out + nn.Conv(self.features, (3, 3), kernel_dilation=(dilation, dilation),
                                padding=((dilation, dilation), (dilation, dilation)),
                                kernel_init=normal_init(0.01), bias_init=bias_init,
                                dtype=self.dtype, name=f"conv2d_list_{index}")(x)
        return out * frame_mask.astype(out.dtype)[:, None, None, None]
