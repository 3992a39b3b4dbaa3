"""TPAVI: temporal pixel-wise audio-visual interaction, in an exact factorised form (spec §3.3).

AVSBench ``TPAVIModule(in_channels=C, inter_channels=I, mode='dot', dimension=3, bn_layer=True)``
called with audio ("va" mode). Frames are processed in independent groups of ``group_size``
consecutive frames (AVSBench hard-codes 5: ``pre_reshape_for_tpavi`` does ``x.reshape(-1, 5, ...)``,
so a 10-frame clip is two groups). Within one group of T frames, with positions p = (t, h, w) and
P = T·H·W:

    A   = a W_align                       a: [T, 128] audio, W_align: Linear 128->C, no bias
    Â_p = A_{t(p)}                        audio broadcast over (h, w)
    θ_p = Conv1x1_θ(x)_p,  φ_p = Conv1x1_φ(Â)_p,  g_p = Conv1x1_g(x)_p      (C -> I, with bias)
    f̃_pq = θ_p·φ_q / P                    'dot' mode: divide by the number of positions, no softmax
    y_p  = Σ_q f̃_pq g_q
    z    = BN(Conv1x1_W(y)) + x           BN γ = β = 0 at init, so z = x at init
                                          (γ = ``gate_init`` when that is set, see below)
    out  = LayerNorm_C(z)                 over channels at each position, eps 1e-5

Factorisation. Â is constant over (h, w) within a frame, hence so is φ: φ_q = φ_{t(q)} with
φ_t = W_φᵀ A_t + b_φ. Grouping the sum over q = (t', h', w') by frame:

    y_p = (1/P) Σ_{t'} Σ_{h',w'} (θ_p·φ_{t'}) g_{t',h',w'}
        = (1/P) Σ_{t'} (θ_p·φ_{t'}) · HW · ḡ_{t'}          ḡ_{t'} = mean_{h',w'} g_{t',h',w'}
        = (1/T) Σ_{t'} (θ_p·φ_{t'}) ḡ_{t'}                 since HW / P = 1 / T
        = θ_pᵀ M,    M = (1/T) Σ_{t'} φ_{t'} ḡ_{t'}ᵀ ∈ R^{I×I}.

This is exact (not an approximation): it costs O(P·I²) instead of O(P²·I) and never forms the
[P, P] affinity (P = 5·56·56 = 15,680 at stage 0 of the paper model). The 1x1x1 convs act on the
channel axis only and are written as ``nn.Dense``. Submodule names follow the PyTorch module
(``align_channel``, ``theta``, ``phi``, ``g``, ``W_z_0`` = conv and ``W_z_1`` = BN of the
``W_z`` Sequential, ``norm_layer``).

The aligned audio A ([N, T, C]) is also returned: AVSBench's ``a_fea`` used by the AVM loss.

The gate. With γ = 0 the output does not depend on the audio at initialisation, so the audio
encoder, φ, θ, g and W_z get exactly zero gradient until γ itself has moved (its gradient is
the only non-zero one on the audio path). AVSBench can afford that: its encoders are
pretrained and only the fusion is learnt. ``gate_init`` > 0 (a small value such as 0.1) starts
the audio path open for a model whose encoders train from scratch; β stays 0 (a bias carries
no audio). The default 0 is the official initialisation.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jax_cavs.models.initializers import torch_default_bias_init, torch_default_kernel_init


def _torch_dense(features: int, fan_in: int, name: str, dtype: Any,
                 use_bias: bool = True) -> nn.Dense:
    """A 1x1 conv / Linear with PyTorch's default init."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(fan_in), dtype=dtype, name=name)


class TPAVI(nn.Module):
    """Audio-visual non-local block over groups of frames (see the module docstring).

    Attributes:
        inter_channels: I, the width of θ, φ and g (128 in AVSBench = C / 2).
        group_size: frames per independent attention group (5 in AVSBench).
        gate_init: initial scale γ of the output BatchNorm (0 in AVSBench; module doc).
        dtype: compute dtype (parameters stay float32).
    """
    inter_channels: int = 128
    group_size: int = 5
    gate_init: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, audio: jnp.ndarray, *, train: bool
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Fuses audio into a visual feature map.

        Args:
            x: [N, T, h, w, C] visual features of N clips of T frames.
            audio: [N, T, D_a] per-frame audio embeddings (D_a = 128 for VGGish).
            train: BatchNorm uses batch statistics (and updates ``batch_stats``) when True.

        Returns:
            out: [N, T, h, w, C] fused features.
            aligned_audio: [N, T, C], A = a W_align.
        """
        n, t, h, w, c = x.shape
        if audio.shape[:2] != (n, t) or audio.ndim != 3:
            raise ValueError(f"TPAVI: audio must be [N, T, D] = [{n}, {t}, D] to match the visual "
                             f"features {x.shape}, got {audio.shape}.")
        if t % self.group_size:
            raise ValueError(f"TPAVI: clip length T={t} is not a multiple of group_size="
                             f"{self.group_size} (model config field tpavi_group).")
        groups = n * t // self.group_size
        x_grouped = x.reshape(groups, self.group_size, h, w, c)
        audio_grouped = audio.reshape(groups, self.group_size, audio.shape[-1])

        aligned = _torch_dense(c, audio.shape[-1], "align_channel", self.dtype,
                               use_bias=False)(audio_grouped)                  # [G, T_g, C]
        theta = _torch_dense(self.inter_channels, c, "theta", self.dtype)(x_grouped)
        phi = _torch_dense(self.inter_channels, c, "phi", self.dtype)(aligned)  # [G, T_g, I]
        g = _torch_dense(self.inter_channels, c, "g", self.dtype)(x_grouped)    # [G, T_g, h, w, I]
        g_mean = g.mean(axis=(2, 3))                                             # [G, T_g, I]
        mixing = jnp.einsum("gti,gtj->gij", phi, g_mean) / self.group_size      # [G, I, I]
        y = jnp.einsum("gthwi,gij->gthwj", theta, mixing)                        # [G, T_g, h, w, I]

        w_y = _torch_dense(c, self.inter_channels, "W_z_0", self.dtype)(y)
        w_y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           scale_init=nn.initializers.constant(self.gate_init),
                           bias_init=nn.initializers.zeros,
                           use_fast_variance=False, dtype=self.dtype, name="W_z_1")(w_y)
        z = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                         name="norm_layer")(w_y + x_grouped)
        return z.reshape(n, t, h, w, c), aligned.reshape(n, t, c)
