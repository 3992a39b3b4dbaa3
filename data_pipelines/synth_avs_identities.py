"""Class identities of SynthAVS: what each class looks like, sounds like, and co-occurs with.

Every class c in 1..K gets (design/SYNTHETIC_AVS.md, "Generative model"):
- a visual identity: a shape family (disc, square, triangle, ring, cross, star, ellipse, bar), a
  hue and a texture (none, stripes or checker with a period and an angle). Ordinary classes get
  distinct (shape, hue) cells, so a visual model can tell them apart.
- an audio identity: an integer fundamental f0 (so the harmonic part is periodic over one
  second), a harmonic amplitude profile ("timbre"), an amplitude-modulation rate and an
  optional band-limited noise component. The (f0, timbre, noise band) combinations are chosen
  by greedy farthest-point selection on their mean VGGish log-mel spectra, so the classes'
  average spectra are as far apart as the grid allows.
- a community: classes are dealt round-robin over a seeded permutation, so communities are
  balanced and interleaved with the class index order (as AVSBench's alphabetical order is).
- look-alike pairs: two classes of one community that share shape and hue; one member carries a
  faint texture, the other none, and their sounds are far apart. They differ mainly by sound.

Everything is drawn from `SeedSequence([seed, 0])`, so identities depend on the seed and the
counts only.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import math

import numpy as np

from data_pipelines.synth_avs_config import SAMPLE_RATE, SynthAVSConfig
from jax_cavs.data import audio as audio_features

SHAPES = ('disc', 'square', 'triangle', 'ring', 'cross', 'star', 'ellipse', 'bar')
HUE_NAMES = ('red', 'orange', 'yellow', 'lime', 'green', 'mint', 'cyan', 'azure', 'blue',
             'violet', 'magenta', 'rose')  # at 0, 30, ..., 330 degrees
TEXTURES = ('plain', 'stripes', 'checker')
TIMBRES = ('saw', 'odd', 'pure', 'formant')
NOISE_BANDS_HZ = (None, (200.0, 700.0), (3000.0, 6000.0))
AM_RATES_HZ = (0, 3, 7)
F0_GRID_HZ = tuple(int(round(f)) for f in np.geomspace(120.0, 1200.0, 16))  # 2.7 semitone steps
BAND_NOISE_LEVEL = 0.5  # RMS of a class's band noise relative to its unit-RMS tone
OUTPUT_GAIN = 0.08  # waveform scale before int16: -9 dB SNR noise peaks stay inside [-1, 1]
_IDENTITY_STREAM = 0  # the clip streams use split ids 1 (train) and 2 (test)


@dataclasses.dataclass(frozen=True)
class ClassIdentities:
    """Per-class attributes, arrays indexed by class id 0..K (row 0 = background, unused).

    Attributes:
        seed: the config seed the identities were drawn from.
        names: K+1 names, 'background' first, then '<hue>_<shape>' (+ '_<texture>' for
            look-alike members).
        community: int [K+1], community of each class (-1 for background).
        lookalike_partner: int [K+1], the partner class of a look-alike member, 0 otherwise.
        shape: int [K+1] index into SHAPES. hue: float [K+1] in [0, 1).
        texture: int [K+1] index into TEXTURES; texture_period (in object radii), texture_angle
            (radians), texture_contrast (relative brightness modulation): float [K+1].
        f0: int [K+1] Hz; timbre: int [K+1] index into TIMBRES; am_rate: int [K+1] Hz (0 = no
            modulation); noise_band: int [K+1] index into NOISE_BANDS_HZ.
    """

    seed: int
    names: tuple[str, ...]
    community: np.ndarray
    lookalike_partner: np.ndarray
    shape: np.ndarray
    hue: np.ndarray
    texture: np.ndarray
    texture_period: np.ndarray
    texture_angle: np.ndarray
    texture_contrast: np.ndarray
    f0: np.ndarray
    timbre: np.ndarray
    am_rate: np.ndarray
    noise_band: np.ndarray

    @property
    def num_classes(self) -> int:
        """K, the number of classes excluding background."""
        return len(self.names) - 1

    def lookalike_pairs(self) -> list[list[int]]:
        """Look-alike pairs [a, b] with a < b, sorted."""
        return [[a, int(b)] for a, b in enumerate(self.lookalike_partner) if 0 < a < b]

    def communities(self) -> list[list[int]]:
        """Classes of each community, sorted."""
        num = int(self.community.max()) + 1
        return [[c for c in range(1, len(self.names)) if self.community[c] == k]
                for k in range(num)]


def _deal_communities(rng: np.random.Generator, k: int, num_communities: int) -> np.ndarray:
    community = np.full(k + 1, -1, np.int64)
    community[1 + rng.permutation(k)] = np.arange(k) % num_communities
    return community


def _pair_lookalikes(rng: np.random.Generator, community: np.ndarray, num_pairs: int) -> np.ndarray:
    """Pairs classes of the same community, visiting communities in a random cyclic order."""
    partner = np.zeros_like(community)
    members = [list(rng.permutation(np.flatnonzero(community == g)))
               for g in range(int(community.max()) + 1)]
    order = rng.permutation(len(members))
    made, step = 0, 0
    while made < num_pairs and any(len(m) >= 2 for m in members):
        pool = members[order[step % len(order)]]
        step += 1
        if len(pool) >= 2:
            a, b = int(pool.pop()), int(pool.pop())
            partner[a], partner[b] = b, a
            made += 1
    return partner


@functools.cache
def _candidate_signatures() -> tuple[np.ndarray, np.ndarray]:
    """Every (f0 index, timbre, noise band) combination and its mean log-mel spectrum.

    The signature is what a nearest-centroid classifier on time-averaged VGGish log-mel frames
    sees: 0.2 s of the unmodulated tone plus its band noise plus white noise at 17.5 dB SNR (the
    middle of the default clean range), through jax_cavs.data.audio. Seed-independent, so it is
    computed once per process. Returns (combos int [C, 3], signatures float [C, 64]).
    """
    rng = np.random.default_rng(0)
    num_samples = SAMPLE_RATE // 5
    combos = np.array(np.meshgrid(np.arange(len(F0_GRID_HZ)), np.arange(len(TIMBRES)),
                                  np.arange(len(NOISE_BANDS_HZ)), indexing='ij')).reshape(3, -1).T
    floor = rng.standard_normal(num_samples) * 10 ** (-17.5 / 20)
    signatures = []
    for f0_index, timbre, band in combos:
        amps = _harmonic_amplitudes(TIMBRES[timbre], F0_GRID_HZ[f0_index])
        wave = _tone(F0_GRID_HZ[f0_index], amps, rng.uniform(0, 2 * np.pi, len(amps)), 0,
                     num_samples)
        if NOISE_BANDS_HZ[band] is not None:
            wave = ((wave + BAND_NOISE_LEVEL * band_noise(rng, NOISE_BANDS_HZ[band], num_samples))
                    / np.sqrt(1.0 + BAND_NOISE_LEVEL ** 2))
        signatures.append(audio_features.log_mel_frames(OUTPUT_GAIN * (wave + floor)).mean(0))
    return combos, np.stack(signatures)


def _spread_audio_identities(rng: np.random.Generator, k: int) -> np.ndarray:
    """K rows of (f0 index, timbre, noise band, AM index).

    The spectral part is chosen by greedy farthest-point selection (random start) on the
    candidates' mean log-mel signatures, so the classes' average spectra are as far apart as
    the grid allows; the AM rate, which a time-averaged spectrum hardly shows, is drawn freely.
    """
    combos, signatures = _candidate_signatures()
    dist = np.sqrt(((signatures[:, None] - signatures[None]) ** 2).sum(-1))
    chosen = [int(rng.integers(len(combos)))]
    nearest = dist[chosen[0]].copy()
    for _ in range(k - 1):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, dist[chosen[-1]])
    spectral = combos[rng.permutation(chosen)]
    return np.concatenate([spectral, rng.integers(0, len(AM_RATES_HZ), (k, 1))], axis=1)


def draw_identities(config: SynthAVSConfig) -> ClassIdentities:
    """Draws the class identities of `config` (deterministic in seed and counts)."""
    rng = np.random.default_rng([config.seed, _IDENTITY_STREAM])
    k = config.num_classes
    community = _deal_communities(rng, k, config.num_communities)
    partner = _pair_lookalikes(rng, community, int(round(config.lookalike_share * k / 2)))

    # Visual: distinct (shape, hue) cells for every class except the second member of a pair.
    leaders = [c for c in range(1, k + 1) if partner[c] == 0 or c < partner[c]]
    num_hues = max(6, math.ceil(len(leaders) / len(SHAPES)))
    cells = rng.permutation(len(SHAPES) * num_hues)[:len(leaders)]
    shape = np.zeros(k + 1, np.int64)
    hue = np.zeros(k + 1)
    texture = rng.integers(0, len(TEXTURES), k + 1)
    period = rng.uniform(0.35, 0.7, k + 1)
    angle = rng.uniform(0.0, np.pi, k + 1)
    contrast = np.full(k + 1, config.texture_contrast)
    for c, cell in zip(leaders, cells):
        shape[c], hue[c] = cell % len(SHAPES), (cell // len(SHAPES)) / num_hues
        if partner[c]:
            other = partner[c]
            shape[other], hue[other] = shape[c], hue[c]
            texture[c], texture[other] = TEXTURES.index('stripes'), TEXTURES.index('plain')
            contrast[c] = config.lookalike_texture_contrast
    contrast[texture == TEXTURES.index('plain')] = 0.0
    contrast[0] = 0.0

    audio = np.zeros((k + 1, 4), np.int64)
    audio[1:] = _spread_audio_identities(rng, k)

    names = ['background']
    for c in range(1, k + 1):
        hue_name = HUE_NAMES[int(round(hue[c] * len(HUE_NAMES))) % len(HUE_NAMES)]
        name = f'{hue_name}_{SHAPES[shape[c]]}'
        names.append(f'{name}_{TEXTURES[texture[c]]}' if partner[c] else name)
    if len(set(names)) != len(names):
        raise AssertionError(f'SynthAVS class names collide: {names}')

    return ClassIdentities(
        seed=config.seed, names=tuple(names), community=community, lookalike_partner=partner,
        shape=shape, hue=hue,
        texture=texture, texture_period=period, texture_angle=angle, texture_contrast=contrast,
        f0=np.array([0] + [F0_GRID_HZ[i] for i in audio[1:, 0]]), timbre=audio[:, 1],
        noise_band=audio[:, 2], am_rate=np.array([0] + [AM_RATES_HZ[i] for i in audio[1:, 3]]))


def class_rgb(identities: ClassIdentities, c: int) -> np.ndarray:
    """Base colour of class c: its hue at saturation 0.8, value 0.8. float [3] in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb(float(identities.hue[c]), 0.8, 0.8))


def _harmonic_amplitudes(timbre: str, f0: int) -> np.ndarray:
    """Amplitude of harmonics 1..n (n f0 < 7 kHz, inside VGGish's 125-7500 Hz mel range)."""
    k = np.arange(1, max(1, int(7000 // f0)) + 1, dtype=np.float64)
    if timbre == 'saw':
        return 1.0 / k
    if timbre == 'odd':
        return np.where(k % 2 == 1, 1.0 / k, 0.0)
    if timbre == 'pure':
        return k ** -2.5
    # 'formant': a resonance one octave wide around 1.5 kHz on a gentle slope.
    return k ** -0.5 * (np.exp(-0.5 * (np.log2(k * f0 / 1500.0) / 0.5) ** 2) + 0.05)


def _tone(f0: int, amps: np.ndarray, phases: np.ndarray, am_rate: int,
          num_samples: int) -> np.ndarray:
    """sum_k amps[k-1] sin(2 pi k f0 t + phases[k-1]) (x (0.6 + 0.4 cos(2 pi am_rate t)) when
    am_rate > 0), normalised to unit RMS. float64 [num_samples]."""
    t = np.arange(num_samples) / SAMPLE_RATE
    harmonics = np.arange(1, len(amps) + 1)[:, None] * f0
    tone = (amps[:, None] * np.sin(2 * np.pi * harmonics * t[None] + phases[:, None])).sum(0)
    if am_rate:
        tone = tone * (0.6 + 0.4 * np.cos(2 * np.pi * am_rate * t))
    return tone / np.sqrt(np.mean(tone ** 2))


def harmonic_tones(identities: ClassIdentities) -> np.ndarray:
    """One second of every class's harmonic, amplitude-modulated tone. float32 [K+1, SAMPLE_RATE].

    Class c: sum_k a_k sin(2 pi k f0 t + phi_k) (a_k from its timbre, phi_k from the stream
    [seed, 0, c]), times (0.6 + 0.4 cos(2 pi r t)) when it has an AM rate r. f0 and r are
    integers, so each row is exactly periodic over the second and clips can tile and circularly
    shift it without clicks. Rows have unit RMS; row 0 (background) is silence.
    """
    tones = np.zeros((identities.num_classes + 1, SAMPLE_RATE), np.float32)
    for c in range(1, identities.num_classes + 1):
        rng = np.random.default_rng([identities.seed, _IDENTITY_STREAM, c])
        f0 = int(identities.f0[c])
        amps = _harmonic_amplitudes(TIMBRES[identities.timbre[c]], f0)
        tones[c] = _tone(f0, amps, rng.uniform(0.0, 2 * np.pi, len(amps)),
                         int(identities.am_rate[c]), SAMPLE_RATE)
    return tones


def band_noise(rng: np.random.Generator, band: tuple[float, float], num_samples: int) -> np.ndarray:
    """White noise restricted to `band` (Hz) by zeroing FFT bins, unit RMS. float64 [L]."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, 1.0 / SAMPLE_RATE)
    spectrum[(freqs < band[0]) | (freqs > band[1])] = 0.0
    noise = np.fft.irfft(spectrum, num_samples)
    return noise / np.sqrt(np.mean(noise ** 2))
