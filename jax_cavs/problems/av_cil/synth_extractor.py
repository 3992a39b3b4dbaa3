"""The frozen, seeded feature extractor of the embedded ``synth_av_ci`` data.

AV-CIL consumes pre-extracted features: one AudioMAE vector f^a [768] per clip and VideoMAE
tokens [8 x 196, 768] (frames x patches, token order (t, h, w)) [AVCIL-code
utils/gen_audio_features.py l. 28-52, utils/gen_visual_features.py l. 62-72; spec_family
§A1]. ``synth_av_ci`` stands in for them with features of SynthAVS clips
(``data_pipelines/synth_avs_scenes.py``) computed by this module. Nothing here is trained;
every random matrix is drawn from ``SeedSequence([seed, stream])``, so a (config, seed) pair
gives the same features on every machine up to floating-point rounding.

Visual tokens, ``visual_tokens(frames)`` -> float32 [L, S, d] (L frames, S = G x G patches in
row-major (h, w) order, as VideoMAE's tokens):

1. pixels -> HSV. SynthAVS paints objects at saturation 0.8 and backgrounds at <= 0.25
   (``synth_avs_identities.class_rgb``, ``synth_avs_scenes._frames``), so the *object weight*
   w = clip((s - 0.4) / 0.3, 0, 1) is ~1 on objects and 0 on the background: the extractor,
   like a pretrained encoder, "knows what an object is", not which class it is;
2. per pixel: a soft hue code (12 circular triangular bins) times w (colour), the gradient of
   w in 8 unsigned orientation bins weighted by its magnitude, outer-multiplied by the hue code
   of the 3 x 3 neighbourhood (the outline: shape by colour, 96), and |Laplacian of the value|
   times w times the hue code (stripes, the textured member of a look-alike pair, 12);
3. average pooling of those 120 channels over each of the G x G patches, a square root
   (Hellinger map: makes sums of objects less dominated by the largest), a fixed random
   orthonormal map 120 -> d and a fixed gain (``VISUAL_GAIN``, tokens of RMS ~1).

A token thus says which colours, outline orientations and textures fill its patch; which
object *sounds* is not in the pixels: silent distractors look exactly like sounding objects.

Audio vector, ``audio_vector(waveform)`` -> float32 [d_a]: the clip's VGGish log-mel frames
(``jax_cavs.data.audio.log_mel_frames``: 25 ms window, 10 ms hop, 64 HTK mel bands), affinely
scaled ((x + 2) / 2), random ReLU features (64 -> 256, Gaussian weights / 8, biases N(0, 0.5^2)),
mean over time, random map 256 -> d_a, and a LayerNorm without affine parameters (AudioMAE's
``fc_norm`` is a LayerNorm too).
"""

from __future__ import annotations

import math

import numpy as np

from jax_cavs.data import audio as audio_lib

NUM_HUES = 12
NUM_ORIENTATIONS = 8
NUM_CHANNELS = NUM_HUES * (2 + NUM_ORIENTATIONS)  # colour 12 + outline 96 + texture 12
AUDIO_HIDDEN = 256
VISUAL_GAIN = 13.0  # tokens of RMS ~1 on the default data (measured 0.98)
_VISUAL_STREAM, _AUDIO_STREAM = 11, 12
EXTRACTOR_VERSION = 1  # part of synth_av_ci's content hash: bump on any change here


def _rgb_to_hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float [..., 3] in [0, 1] -> hue in [0, 1), saturation, value (each [...])."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    value = x.max(-1)
    chroma = value - x.min(-1)
    saturation = np.where(value > 0, chroma / np.maximum(value, 1e-6), 0.0)
    c = np.maximum(chroma, 1e-6)
    hue = np.where(value == r, ((g - b) / c) % 6,
                   np.where(value == g, (b - r) / c + 2, (r - g) / c + 4)) / 6
    return hue, saturation, value


def _circular_bins(position: np.ndarray, count: int) -> np.ndarray:
    """Soft one-hot [..., count] of ``position`` in bin units on a circle of ``count`` bins."""
    centres = np.arange(count, dtype=np.float32)
    distance = np.abs((position[..., None] - centres + count / 2) % count - count / 2)
    return np.maximum(np.float32(0), 1 - distance)


def _box3(x: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3 x 3 neighbourhood of x [..., H, W, C] (zero padding)."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
    h, w = x.shape[-3], x.shape[-2]
    return sum(padded[..., i:i + h, j:j + w, :] for i in range(3) for j in range(3))


class Extractor:
    """The frozen extractor of one (seed, grid, dims) choice; see the module docstring."""

    def __init__(self, seed: int, num_patches: int, visual_dim: int, audio_dim: int):
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(f"synth_av_ci: num_patches={num_patches} must be a square "
                             f"(a G x G grid of patches per frame).")
        self.grid, self.visual_dim, self.audio_dim = grid, visual_dim, audio_dim
        rng = np.random.default_rng(np.random.SeedSequence([seed, _VISUAL_STREAM]))
        q, _ = np.linalg.qr(rng.standard_normal((max(NUM_CHANNELS, visual_dim),
                                                 min(NUM_CHANNELS, visual_dim))))
        self.visual_map = (q if visual_dim <= NUM_CHANNELS else q.T).astype(np.float32)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _AUDIO_STREAM]))
        bands = audio_lib.NUM_MEL_BANDS
        self.audio_w1 = (rng.standard_normal((bands, AUDIO_HIDDEN)) / math.sqrt(bands)
                         ).astype(np.float32)
        self.audio_b1 = (0.5 * rng.standard_normal(AUDIO_HIDDEN)).astype(np.float32)
        self.audio_w2 = (rng.standard_normal((AUDIO_HIDDEN, audio_dim))
                         / math.sqrt(AUDIO_HIDDEN)).astype(np.float32)

    def visual_tokens(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames [L, H, W, 3] (H, W divisible by the grid) -> float32 [L, S, d]."""
        num_frames, height, width, _ = frames.shape
        g = self.grid
        if height % g or width % g:
            raise ValueError(f"synth_av_ci: frames of {height} x {width} pixels do not split "
                             f"into a {g} x {g} grid of patches; choose image_size divisible "
                             f"by {g}.")
        x = frames.astype(np.float32) / 255.0
        hue, saturation, value = _rgb_to_hsv(x)
        weight = np.clip((saturation - 0.4) / 0.3, 0.0, 1.0)
        colour = _circular_bins(hue * NUM_HUES, NUM_HUES) * weight[..., None]
        neighbourhood = _box3(colour)
        hue_code = neighbourhood / np.maximum(neighbourhood.sum(-1, keepdims=True), 1e-6)
        grad_y, grad_x = np.gradient(weight, axis=(1, 2))
        magnitude = np.hypot(grad_x, grad_y)
        angle = (np.arctan2(grad_y, grad_x) % np.pi) * np.float32(NUM_ORIENTATIONS / np.pi)
        orientation = _circular_bins(angle, NUM_ORIENTATIONS) * magnitude[..., None]
        padded = np.pad(value, ((0, 0), (1, 1), (1, 1)), mode="edge")
        laplacian = np.abs(4 * value - padded[:, :-2, 1:-1] - padded[:, 2:, 1:-1]
                           - padded[:, 1:-1, :-2] - padded[:, 1:-1, 2:])
        ph, pw = height // g, width // g

        def patches(x):  # [L, H, W, C] -> [L, G * G, ph * pw, C]
            x = x.reshape(num_frames, g, ph, g, pw, -1).transpose(0, 1, 3, 2, 4, 5)
            return x.reshape(num_frames, g * g, ph * pw, -1)

        hue_code = patches(hue_code)
        outline = np.swapaxes(hue_code, -1, -2) @ patches(orientation)  # [L, S, 12, 8]
        texture = (hue_code * patches((laplacian * weight)[..., None])).sum(2)
        pooled = np.concatenate([patches(colour).sum(2), 4 * outline.reshape(
            num_frames, g * g, -1), 4 * texture], -1) / (ph * pw)
        tokens = np.sqrt(pooled) @ self.visual_map
        return (VISUAL_GAIN * tokens).astype(np.float32)

    def audio_vector(self, waveform: np.ndarray) -> np.ndarray:
        """Mono float 16 kHz waveform [n >= 400] -> float32 [d_a]."""
        mel = (audio_lib.log_mel_frames(waveform) + 2.0) / 2.0
        hidden = np.maximum(mel @ self.audio_w1 + self.audio_b1, 0.0).mean(0)
        out = hidden @ self.audio_w2
        out = out - out.mean()
        return (out / np.sqrt(np.mean(out ** 2) + 1e-6)).astype(np.float32)
