"""The AV-CIL model (spec_family §A3): audio-guided visual attention over pre-extracted tokens.

The encoders are frozen and their features pre-extracted (AudioMAE audio vector, VideoMAE
tokens), so the trainable model is small [AVCIL-code model/audio_visual_model_incremental.py
``IncreAudioVisualNet``]. With f^a the audio vector and v_{l,s} the visual token of frame l,
patch s (audio-visual modality)::

    a = tanh(W^a f^a + b),   V_{l,s} = tanh(W^v v_{l,s} + b)                 (``attn_*_proj``)
    w^spa_{l,s,c} = softmax_s(V_{l,s,c} a_c)            per channel c       (``forward`` l. 103)
    z_{l,c}       = Σ_s w^spa_{l,s,c} V_{l,s,c}
    w^tem_{l,c}   = softmax_l(z_{l,c} a_c)
    p_c           = Σ_l w^tem_{l,c} Σ_s w^spa_{l,s,c} v_{l,s,c}   (the *raw* tokens, l. 81-82)
    h^a = ReLU(U^a f^a + b),  h^v = ReLU(U^v p + b),  h = h^a + h^v,  logits = W h + b

The attention is per channel, so the attention projections keep the visual width D_v
(``p`` weighs raw tokens channel by channel). Audio only: h = ReLU(U^a f^a); visual only:
h = ReLU(U^v mean_{l,s} v_{l,s}) (the code's ``torch.mean(visual, dim=1)``).

The classifier covers every class of the scenario (static shapes); the problem's seen mask
hides the classes not learned yet, and the core leaves their rows at their initialisation
until their task (``core.steps``), as the code's ``incremental_classifier`` adds fresh rows.
Every Linear is torch's default init (kaiming-uniform a = sqrt 5, bias U(±1/sqrt fan_in)).

Baseline heads (``heads``): ``head="lsc"`` replaces the linear classifier by AFC's local
similarity classifier (logits = its similarities; ``features["nca_scale"]`` [B] its learnable
scale η), and ``nme=True`` adds iCaRL's nearest-mean-of-exemplars scores
``features["nme_logits"]`` [B, K] from the class means ``nme/class_means`` that iCaRL's and
AFC's strategies fill (the problem's "frozen" role: the optimiser never moves them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_cavs.models.initializers import torch_default_bias_init, torch_default_kernel_init
from jax_cavs.problems.av_cil.heads import LSCClassifier, NearestMeanHead

MODALITIES = ("audio-visual", "audio", "visual")
HEADS = ("linear", "lsc")


def torch_linear(features: int, fan_in: int, name: str) -> nn.Dense:
    """``nn.Linear(fan_in, features)`` with torch's default initialisation."""
    return nn.Dense(features, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(fan_in), name=name)


class AudioGuidedAttention(nn.Module):
    """Spatial then temporal attention of the visual tokens, per channel, guided by audio.

    ``__call__(audio [B, D_a], visual [B, L, S, D_v])`` returns ``(p [B, D_v],
    w^spa [B, L, S, D_v], w^tem [B, L, D_v])`` (module docstring's equations).
    """

    @nn.compact
    def __call__(self, audio: jnp.ndarray, visual: jnp.ndarray):
        width = visual.shape[-1]
        a = jnp.tanh(torch_linear(width, audio.shape[-1], "attn_audio_proj")(audio))
        v = jnp.tanh(torch_linear(width, width, "attn_visual_proj")(visual))
        spatial = jax.nn.softmax(v * a[:, None, None, :], axis=2)
        z = jnp.sum(spatial * v, axis=2)
        temporal = jax.nn.softmax(z * a[:, None, :], axis=1)
        pooled = jnp.sum(temporal * jnp.sum(spatial * visual, axis=2), axis=1)
        return pooled, spatial, temporal


class AVCILNet(nn.Module):
    """The trainable AV-CIL model.

    Attributes:
      num_classes: K, the classifier's outputs (every class of the scenario).
      modality: one of ``MODALITIES``.
      dim: width of the fusion projections U^a, U^v (768 in the paper).
      num_frames: L, the visual tokens' temporal groups (8: VideoMAE's 16 frames, tubelet 2);
        the tokens are reshaped ``[B, L·S, D_v] -> [B, L, S, D_v]`` in (t, h, w) order.
      head: the classifier, ``"linear"`` or AFC's ``"lsc"`` (module docstring).
      nme: adds the nearest-mean-of-exemplars scores ``features["nme_logits"]``.
    """

    num_classes: int
    modality: str = "audio-visual"
    dim: int = 768
    num_frames: int = 8
    head: str = "linear"
    nme: bool = False

    @nn.compact
    def __call__(self, audio: jnp.ndarray, visual: jnp.ndarray):
        """``audio`` float [B, D_a], ``visual`` float [B, L·S, D_v] -> (logits [B, K],
        features): ``"fused"`` h [B, dim] (the classifier's input) and, where the modality
        has them, ``"audio"`` h^a, ``"visual"`` h^v [B, dim] (before the sum, for the
        audio-visual contrastive terms), ``"pooled_visual"`` p [B, D_v], ``"spatial"``
        w^spa [B, L, S, D_v] and ``"temporal"`` w^tem [B, L, D_v] (VAD)."""
        if self.modality not in MODALITIES:
            raise ValueError(f"config field model.modality={self.modality!r} is not one of "
                             f"{MODALITIES}.")
        if self.head not in HEADS:
            raise ValueError(f"config field model.head={self.head!r} is not one of {HEADS}.")
        features = {}
        if self.modality != "visual":
            features["audio"] = nn.relu(
                torch_linear(self.dim, audio.shape[-1], "audio_proj")(audio))
        if self.modality == "visual":
            pooled = jnp.mean(visual, axis=1)
        elif self.modality == "audio-visual":
            batch, tokens, width = visual.shape
            if tokens % self.num_frames:
                raise ValueError(f"{tokens} visual tokens per clip do not split into "
                                 f"model.num_frames={self.num_frames} frames.")
            grid = visual.reshape(batch, self.num_frames, tokens // self.num_frames, width)
            pooled, features["spatial"], features["temporal"] = AudioGuidedAttention(
                name="attention")(audio, grid)
            features["pooled_visual"] = pooled
        if self.modality != "audio":
            features["visual"] = nn.relu(
                torch_linear(self.dim, visual.shape[-1], "visual_proj")(pooled))
        fused = sum(features[m] for m in ("audio", "visual") if m in features)
        features["fused"] = fused
        if self.head == "lsc":
            logits, factor = LSCClassifier(self.num_classes, name="classifier")(fused)
            features["nca_scale"] = jnp.broadcast_to(factor, fused.shape[:1])
        else:
            logits = torch_linear(self.num_classes, self.dim, "classifier")(fused)
        if self.nme:
            features["nme_logits"] = NearestMeanHead(self.num_classes, name="nme")(fused)
        return logits, features
