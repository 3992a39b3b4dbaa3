"""The AVSBench audio-visual segmentation model ("ResNet_AVSModel" for AVSS, spec §3).

    frames [N, T, H, W, 3] -> ResNet (§3.1) -> 4 stage maps
    audio  [N, T, 96, 64]  -> VGGish (§2.5) -> [N·T, 128] × frame mask
    stage maps -> dilated-sum neck (§3.2) × frame mask -> F0..F3 (C channels)
    F_i -> TPAVI_i(F_i, audio) × frame mask, for i in ``tpavi_stages`` (§3.3)
    F0..F3 -> progressive decoder (§3.4) -> logits [N, T, H, W, K] × frame mask

The image side must be a multiple of 32 (the ResNet stride), the clip length T a multiple of
``tpavi_group``. K = ``num_classes`` includes background; logits always cover all K classes.

Visual-only twin: the same model called with the log-mel of silence (``CAVSProblem.apply``
with ``drop={"audio"}``; ``data.audio.silent_log_mel``, not ``audio = 0``, which in log-mel is a
loud broadband sound); every frame then gets the same audio embedding, so the audio path
carries no information about the clip while the architecture, parameters and shapes stay
identical.

Mixed precision: ``dtype`` is the compute dtype; parameters are always float32, and the returned
logits are cast to float32 (features stay in the compute dtype).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from jax_cavs.models.audio.vggish import VGGISH_NUM_BANDS, VGGISH_NUM_FRAMES, VGGish
from jax_cavs.models.backbones.resnet import ResNet
from jax_cavs.models.fusion.tpavi import TPAVI
from jax_cavs.models.heads.decoder import ProgressiveDecoder
from jax_cavs.models.heads.neck import DilatedSumNeck

NUM_STAGES = 4
BACKBONE_STRIDE = 32
MIN_HEAD_CHANNELS = 8


class AVSModel(nn.Module):
    """Backbone + audio encoder + neck + TPAVI + decoder; defaults are the paper model.

    Attributes:
        num_classes: K, including background.
        backbone_depth: ResNet depth (18, 34, 50).
        backbone_width: multiplier on ResNet's 64 base channels.
        neck_channels: C, channels of the neck, TPAVI and decoder (256). The decoder head's two
            convs have C/2 and max(C/8, 8) channels (AVSBench: 128, 32); the floor of 8 keeps
            the per-pixel classifier's input from becoming a rank bottleneck in small models.
        neck_dilations: dilations of the summed 3x3 neck convs.
        tpavi_stages: the stages (0..3) that get a TPAVI block; () disables fusion.
        tpavi_inter_channels: I, TPAVI's θ/φ/g width (128).
        tpavi_group: frames per TPAVI attention group (5).
        tpavi_gate_init: initial scale of TPAVI's output BatchNorm (``fusion.tpavi`` doc): 0,
            AVSBench's, leaves the audio path without gradient at initialisation; a small
            value (0.1) opens it for encoders trained from scratch.
        audio_width: multiplier on VGGish's conv channels and hidden FC sizes.
        freeze_audio: stop gradients at the VGGish output (AVSBench keeps it frozen).
        dtype: compute dtype (params stay float32).
        remat_backbone: recompute the backbone blocks' activations in the backward pass.
    """
    num_classes: int
    backbone_depth: int = 50
    backbone_width: float = 1.0
    neck_channels: int = 256
    neck_dilations: Sequence[int] = (3, 6, 12, 18)
    tpavi_stages: Sequence[int] = (0, 1, 2, 3)
    tpavi_inter_channels: int = 128
    tpavi_group: int = 5
    tpavi_gate_init: float = 0.0
    audio_width: float = 1.0
    freeze_audio: bool = True
    dtype: Any = jnp.float32
    remat_backbone: bool = False

    @nn.compact
    def __call__(self, frames: jnp.ndarray, audio: jnp.ndarray, frame_mask: jnp.ndarray, *,
                 train: bool) -> tuple[jnp.ndarray, dict[str, Any]]:
        """Segments N clips of T frames.

        Args:
            frames: [N, T, H, W, 3] ImageNet-normalised frames.
            audio: [N, T, 96, 64] per-frame log-mel examples.
            frame_mask: [N, T] 1 for real frames, 0 for padding.
            train: BatchNorm in train mode (batch statistics; ``batch_stats`` must be mutable).

        Returns:
            logits: [N, T, H, W, K] float32, zero on padded frames.
            features: dict with
                ``backbone``: 4-tuple of ResNet stage outputs [N·T, H/2^(i+2), W/2^(i+2), c_i];
                ``neck``: 4-tuple of the fused maps F_i after neck and TPAVI (before the decoder's
                    ReLU; the reference's AVM loss sees relu(F_i)), [N·T, H/2^(i+2), W/2^(i+2), C];
                ``aligned_audio``: 4-tuple, TPAVI's A_i [N·T, C] for stages in ``tpavi_stages``,
                    None elsewhere (AVSBench's ``a_fea_list``);
                ``decoder``: D1 [N·T, H/2, W/2, C];
                ``logits_small``: 2x2 average of the logits, [N·T, H/2, W/2, K];
                ``audio``: VGGish embeddings × frame mask, [N·T, 128].
        """
        self._check_inputs(frames, audio, frame_mask)
        n, t, h, w, _ = frames.shape
        mask = frame_mask.reshape(n * t).astype(self.dtype)

        stages = ResNet(depth=self.backbone_depth, width=self.backbone_width, dtype=self.dtype,
                        remat_blocks=self.remat_backbone, name="backbone")(
                            frames.reshape(n * t, h, w, 3), train=train)
        audio_embedding = VGGish(width=self.audio_width, frozen=self.freeze_audio,
                                 dtype=self.dtype, name="audio_encoder")(
                                     audio.reshape(n * t, *audio.shape[2:]))
        audio_embedding = audio_embedding * mask[:, None]

        fused, aligned_audio = [], []
        for stage, x in enumerate(stages):
            f = DilatedSumNeck(features=self.neck_channels, dilations=tuple(self.neck_dilations),
                               dtype=self.dtype, name=f"neck_{stage}")(x, mask)
            a = None
            if stage in self.tpavi_stages:
                f, a = TPAVI(inter_channels=self.tpavi_inter_channels,
                             group_size=self.tpavi_group, gate_init=self.tpavi_gate_init,
                             dtype=self.dtype,
                             name=f"tpavi_{stage}")(
                                 f.reshape(n, t, *f.shape[1:]),
                                 audio_embedding.reshape(n, t, -1), train=train)
                f = f.reshape(n * t, *f.shape[2:]) * mask[:, None, None, None]
                a = a.reshape(n * t, -1)
            fused.append(f)
            aligned_audio.append(a)

        head_channels = (self.neck_channels // 2, max(self.neck_channels // 8, MIN_HEAD_CHANNELS))
        logits, d1 = ProgressiveDecoder(num_classes=self.num_classes, head_channels=head_channels,
                                        dtype=self.dtype, name="decoder")(tuple(fused), mask)
        logits = logits.astype(jnp.float32)
        features = {
            "backbone": tuple(stages),
            "neck": tuple(fused),
            "aligned_audio": tuple(aligned_audio),
            "decoder": d1,
            "logits_small": nn.avg_pool(logits, (2, 2), strides=(2, 2)),
            "audio": audio_embedding,
        }
        return logits.reshape(n, t, h, w, self.num_classes), features

    def _check_inputs(self, frames: jnp.ndarray, audio: jnp.ndarray,
                      frame_mask: jnp.ndarray) -> None:
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"AVSModel: frames must be [N, T, H, W, 3], got {frames.shape}.")
        n, t, h, w, _ = frames.shape
        if h % BACKBONE_STRIDE or w % BACKBONE_STRIDE:
            raise ValueError(f"AVSModel: frame size {h}x{w} must be a multiple of "
                             f"{BACKBONE_STRIDE} (the ResNet stride); change the data resolution.")
        if audio.shape != (n, t, VGGISH_NUM_FRAMES, VGGISH_NUM_BANDS):
            raise ValueError(f"AVSModel: audio must be [N, T, {VGGISH_NUM_FRAMES}, "
                             f"{VGGISH_NUM_BANDS}] = {(n, t, VGGISH_NUM_FRAMES, VGGISH_NUM_BANDS)}, "
                             f"got {audio.shape}.")
        if frame_mask.shape != (n, t):
            raise ValueError(f"AVSModel: frame_mask must be [N, T] = {(n, t)}, "
                             f"got {frame_mask.shape}.")
        bad_stages = [s for s in self.tpavi_stages if s not in range(NUM_STAGES)]
        if bad_stages:
            raise ValueError(f"AVSModel: tpavi_stages {tuple(self.tpavi_stages)} contains "
                             f"{bad_stages}; stages are 0..{NUM_STAGES - 1}.")
        if self.tpavi_stages and t % self.tpavi_group:
            raise ValueError(f"AVSModel: clip length T={t} is not a multiple of tpavi_group="
                             f"{self.tpavi_group}; set model.tpavi_group to a divisor of T.")


# The fields of AVSModel; ``build_model`` accepts exactly these (num_classes required).
MODEL_CONFIG_FIELDS = ("num_classes", "backbone_depth", "backbone_width", "neck_channels",
                       "neck_dilations", "tpavi_stages", "tpavi_inter_channels", "tpavi_group",
                       "tpavi_gate_init", "audio_width", "freeze_audio", "dtype", "remat_backbone")
_SEQUENCE_FIELDS = ("neck_dilations", "tpavi_stages")


def build_model(model_cfg: ml_collections.ConfigDict) -> AVSModel:
    """Builds an ``AVSModel`` from a config whose fields are ``MODEL_CONFIG_FIELDS``.

    Fields that are absent take ``AVSModel``'s defaults (the paper model); ``num_classes`` is
    required. ``dtype`` may be a string ("float32", "bfloat16") or a dtype.

    Raises:
        ValueError: on an unknown field (a typo would otherwise silently fall back to a default)
            or a missing ``num_classes``.
    """
    fields = dict(model_cfg.items())
    unknown = sorted(set(fields) - set(MODEL_CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"config.model has unknown field(s) {unknown}; valid fields are "
                         f"{list(MODEL_CONFIG_FIELDS)}.")
    if "num_classes" not in fields:
        raise ValueError("config.model.num_classes is required (number of classes including "
                         "background).")
    for name in _SEQUENCE_FIELDS:
        if name in fields:
            fields[name] = tuple(int(v) for v in fields[name])
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return AVSModel(**fields)

