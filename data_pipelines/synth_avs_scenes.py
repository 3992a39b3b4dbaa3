"""Scenes of SynthAVS: planning and rendering one clip (design/SYNTHETIC_AVS.md).

A clip is produced in two stages, each from its own random stream:
1. `SynthAVSGenerator.plan(split, index)`: which classes appear (a primary sounding class, more
   sounding objects in multi-source clips, silent distractors such as the primary's look-alike),
   where they move, in which frames each one truly sounds (`active`, the labels follow it) and
   in which frames its sound is really in the waveform (`emitted`; differs from `active` for the
   late-onset / early-offset corruptions; the emitted class differs for 'mismatched'). Planning
   rasterises the silhouettes and re-draws the placement until every sounding object is visible
   in an annotated frame, so the ground-truth class set, the co-occurrence statistics and the
   true audio-visual consistency are known from the plan alone.
2. `SynthAVSGenerator.render(plan)`: frames (smooth background gradient + textured objects +
   pixel noise), labels (class of the topmost object where it sounds, 0 elsewhere, silent
   distractors included), and audio (the sounding objects' class sounds in their emitted frames
   plus white noise at the clip's SNR, 1 s of 16 kHz per frame).

The streams of clip i of split s are `SeedSequence([seed, split_id(s), i]).spawn(3)` (plan,
image, audio), so clips can be generated in any order or in parallel.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math

import numpy as np

from data_pipelines import synth_avs_identities as ids_lib
from data_pipelines.synth_avs_config import SAMPLE_RATE, SPLITS, SynthAVSConfig
from data_pipelines.synth_avs_objects import (SceneObject, inside_shape, local_coords,
                                            texture_pattern, topmost)

SPLIT_IDS = {'train': 1, 'test': 2}
MIN_VISIBLE_SHARE = 0.25  # of the object's largest in-frame silhouette, in one annotated frame
MIN_VISIBLE_PIXELS = 4
PLACEMENT_ATTEMPTS = 20
FALLBACK_ANCHORS = ((0.3, 0.3), (0.7, 0.7), (0.7, 0.3), (0.3, 0.7))  # image fractions
PIXEL_NOISE_STD = 0.03  # in [0, 1] intensity units
RAMP_SAMPLES = SAMPLE_RATE // 50  # 20 ms on/off ramps, so gating does not click
FULL_CONSISTENCY_SNR_DB = 10.0  # SNR at and above which a sound counts as fully audible
ZERO_CONSISTENCY_SNR_DB = -10.0  # SNR at and below which it counts as inaudible
_V1_MAX_FRAMES = 5  # AVSBench v1 clips have 5 frames; longer clips are 'v2'


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """Everything about a clip except pixel colours and waveforms.

    objects are in drawing order (bottom first). label_mask: bool [T] annotated frames;
    frame_mask: bool [T] real (not padded) frames. silhouettes: bool [n_obj, T, H, W], each
    object's unoccluded shape; top: int8 [T, H, W], index of the topmost object (-1 = none).
    """

    split: str
    index: int
    uid: str
    subset: str
    community: int
    objects: tuple[SceneObject, ...]
    frame_mask: np.ndarray
    label_mask: np.ndarray
    corruption: str
    snr_db: float
    silhouettes: np.ndarray
    top: np.ndarray

    def labels(self) -> np.ndarray:
        """Semantic labels: class of the topmost object where it sounds, in annotated frames.

        Returns uint8 [T, H, W] (0 = background, silent distractors and unannotated frames).
        """
        labels = np.zeros(self.top.shape, np.uint8)
        for o, obj in enumerate(self.objects):
            if obj.sounding:
                for t in np.flatnonzero(obj.active & self.label_mask):
                    labels[t][self.top[t] == o] = obj.class_id
        return labels

    def classes(self) -> list[int]:
        """Sorted ground-truth classes: the union over annotated frames, background excluded."""
        present = np.unique(self.labels())
        return [int(c) for c in present if c != 0]

    def consistency(self) -> float:
        """True audio-visual consistency in [0, 1] (1 = the audio supports every label).

        Mean over the (sounding object, real frame) pairs where the object sounds and is visible
        of its audibility: 0 when its own class's sound is absent from the waveform in that
        frame (late onset, early offset, mismatched), otherwise the clip's SNR mapped linearly
        from 0 at -10 dB to 1 at +10 dB (weak SNR).
        """
        audible = np.clip((self.snr_db - ZERO_CONSISTENCY_SNR_DB)
                          / (FULL_CONSISTENCY_SNR_DB - ZERO_CONSISTENCY_SNR_DB), 0.0, 1.0)
        visible = (self.top[None] == np.arange(len(self.objects))[:, None, None, None]).any((2, 3))
        scores = []
        for o, obj in enumerate(self.objects):
            if obj.sounding:
                pairs = obj.active & self.frame_mask & visible[o]
                heard = obj.emitted & (obj.emitted_class == obj.class_id)
                scores.extend(np.where(heard[pairs], audible, 0.0))
        return float(np.mean(scores))


@dataclasses.dataclass(frozen=True)
class SynthAVSGenerator:
    """Generates SynthAVS clips for one config: `example(split, index)` -> feature dict."""

    config: SynthAVSConfig
    identities: ids_lib.ClassIdentities
    tones: np.ndarray  # float32 [K+1, SAMPLE_RATE], one second of each class's tone

    @classmethod
    def from_config(cls, config: SynthAVSConfig) -> 'SynthAVSGenerator':
        identities = ids_lib.draw_identities(config)
        return cls(config, identities, ids_lib.harmonic_tones(identities))

    # --- planning -----------------------------------------------------------------------------

    def _streams(self, split: str, index: int) -> list[np.random.Generator]:
        if split not in SPLITS or not 0 <= index < self.config.num_clips(split):
            raise ValueError(f'No SynthAVS clip {split}[{index}] in config {self.config.name!r} '
                             f'({self.config.num_clips(split) if split in SPLITS else 0} clips).')
        seq = np.random.SeedSequence([self.config.seed, SPLIT_IDS[split], index])
        return [np.random.default_rng(s) for s in seq.spawn(3)]

    def _draw_classes(self, rng: np.random.Generator, primary: int) -> tuple[list[int], list[int]]:
        """Sounding classes (primary first) and silent distractor classes, all distinct."""
        cfg, k = self.config, self.config.num_classes
        community = self.identities.community
        used = {primary}

        def draw() -> int:
            free = [c for c in range(1, k + 1) if c not in used]
            own = [c for c in free if community[c] == community[primary]]
            pool = own if own and rng.random() >= cfg.cross_community_prob else free
            c = int(rng.choice(pool))
            used.add(c)
            return c

        n_sounding = 1
        if rng.random() < cfg.multi_source_share:
            n_sounding = min(int(rng.integers(2, cfg.max_sounding + 1)), k)
        sounding = [primary] + [draw() for _ in range(n_sounding - 1)]
        room = min(cfg.max_objects, k) - n_sounding
        silent = []
        partner = int(self.identities.lookalike_partner[primary])
        wants_partner = rng.random() < cfg.lookalike_distractor_prob
        if room and partner and partner not in used and wants_partner:
            silent.append(partner)
            used.add(partner)
        if room > len(silent) and rng.random() < cfg.silent_distractor_prob:
            silent += [draw() for _ in range(int(rng.integers(1, room - len(silent) + 1)))]
        return sounding, silent

    def _activity(self, rng: np.random.Generator, num_sounding: int, real: int) -> np.ndarray:
        """bool [n_sounding, T]: frames where each sounding object truly sounds."""
        t = np.arange(self.config.num_frames)
        active = np.repeat((t < real)[None], num_sounding, axis=0)
        for j in range(1, num_sounding):
            if real >= 2 and rng.random() < self.config.intermittent_share:
                length = int(rng.integers(math.ceil(real / 2), real))
                start = int(rng.integers(0, real - length + 1))
                active[j] = (t >= start) & (t < start + length)
        return active

    def _corrupt(self, rng: np.random.Generator, split: str, sounding: list[int], real: int,
                 active: np.ndarray) -> tuple[str, float, np.ndarray, list[int]]:
        """Draws the clip's corruption (applied to the primary) and SNR.

        Returns (corruption, snr_db, emitted bool [n_sounding, T], emitted classes).
        """
        cfg = self.config
        emitted, emitted_class = active.copy(), list(sounding)
        kinds = [c for c in cfg.corruptions
                 if (real >= 2 or c not in ('late_onset', 'early_offset'))
                 and (c != 'mismatched' or len(sounding) < cfg.num_classes)]
        corruption = 'none'
        if split == 'train' and kinds and rng.random() < cfg.low_consistency_share:
            corruption = kinds[int(rng.integers(len(kinds)))]
        t = np.arange(cfg.num_frames)
        if corruption == 'weak_snr':
            return corruption, float(rng.uniform(*cfg.weak_snr_db_range)), emitted, emitted_class
        if corruption == 'late_onset':  # silent for the first ceil(real/3) .. real-1 frames
            emitted[0] &= t >= int(rng.integers(math.ceil(real / 3), real))
        elif corruption == 'early_offset':  # silent for the last ceil(real/3) .. real-1 frames
            emitted[0] &= t < int(rng.integers(1, real - math.ceil(real / 3) + 1))
        elif corruption == 'mismatched':
            others = [c for c in range(1, cfg.num_classes + 1) if c not in sounding]
            emitted_class[0] = int(rng.choice(others))
        return corruption, float(rng.uniform(*cfg.snr_db_range)), emitted, emitted_class

    def _sounding_visible(self, objects: list[SceneObject], silhouettes: np.ndarray,
                          top: np.ndarray, label_mask: np.ndarray) -> bool:
        for o, obj in enumerate(objects):
            if not obj.sounding:
                continue
            area = silhouettes[o].sum((1, 2))
            shown = (top == o).sum((1, 2))
            need = max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_SHARE * area.max())
            if not np.any(obj.active & label_mask & (shown >= need)):
                return False
        return True

    def _place(self, rng: np.random.Generator, classes: list[int], sounding: list[bool],
               active: np.ndarray, emitted: np.ndarray, emitted_class: list[int],
               label_mask: np.ndarray):
        """Draws sizes, rotations, trajectories and drawing order until every sounding object is
        visible in an annotated frame; after PLACEMENT_ATTEMPTS failures (about 1 clip in 200
        needs a second attempt), parks the sounding objects, still, on top of the others at
        fixed anchors that do not overlap (radius <= 0.2 image sizes, anchors 0.4 apart).

        Returns (objects in drawing order, silhouettes bool [n, T, H, W], top int8 [T, H, W]).
        """
        cfg = self.config
        size, n = cfg.image_size, len(classes)
        shapes = [ids_lib.SHAPES[self.identities.shape[c]] for c in classes]

        def build(order, radius, rotation, start, velocity):
            objects = [SceneObject(classes[i], sounding[i], float(radius[i]), float(rotation[i]),
                                   start[i].copy(), velocity[i].copy(), active[i], emitted[i],
                                   emitted_class[i])
                       for i in order]
            silhouettes = np.stack([inside_shape(shapes[i],
                                                 *local_coords(obj, cfg.num_frames, size))
                                    for i, obj in zip(order, objects)])
            return objects, silhouettes, topmost(silhouettes)

        for attempt in range(PLACEMENT_ATTEMPTS + 1):
            radius = rng.uniform(*cfg.object_radius_range, n) * size
            rotation = rng.uniform(0.0, 2 * np.pi, n)
            start = rng.uniform(0.15 * size, 0.85 * size, (n, 2))
            heading = rng.uniform(0.0, 2 * np.pi, n)
            speed = rng.uniform(0.0, cfg.max_speed * size, n)
            velocity = speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], 1)
            order = rng.permutation(n)
            if attempt == PLACEMENT_ATTEMPTS:  # last resort: park the sounding objects on top
                anchors = iter(FALLBACK_ANCHORS)
                for i in np.flatnonzero(sounding):
                    start[i] = np.array(next(anchors)) * size
                    radius[i] = min(radius[i], 0.2 * size)
                    velocity[i] = 0.0
                order = np.concatenate([np.flatnonzero(~np.array(sounding)),
                                        np.flatnonzero(sounding)])
            placed = build(order, radius, rotation, start, velocity)
            if self._sounding_visible(*placed, label_mask):
                return placed
        raise AssertionError(f'SynthAVS fallback placement failed for {cfg.name!r}.')

    def plan(self, split: str, index: int) -> ClipPlan:
        """Plans clip `index` of `split` (deterministic in seed, split and index)."""
        cfg = self.config
        rng = self._streams(split, index)[0]
        primary = 1 + index % cfg.num_classes
        sounding_classes, silent_classes = self._draw_classes(rng, primary)
        n_sounding = len(sounding_classes)
        t = np.arange(cfg.num_frames)
        real = cfg.num_frames // 2 if rng.random() < cfg.short_clip_share else cfg.num_frames
        subset = ('v1s' if n_sounding == 1 else 'v1m') if real <= _V1_MAX_FRAMES else 'v2'
        label_mask = t < real
        if split == 'train' and subset == 'v1s' and rng.random() < cfg.first_frame_only_share:
            label_mask = t == 0
        active = self._activity(rng, n_sounding, real)
        corruption, snr_db, emitted, emitted_class = self._corrupt(
            rng, split, sounding_classes, real, active)
        n_silent = len(silent_classes)
        no_frames = np.zeros((n_silent, cfg.num_frames), bool)
        objects, silhouettes, top = self._place(
            rng, sounding_classes + silent_classes, [True] * n_sounding + [False] * n_silent,
            np.concatenate([active, no_frames]), np.concatenate([emitted, no_frames]),
            emitted_class + [0] * n_silent, label_mask)
        return ClipPlan(split=split, index=index, uid=f'{split}_{index:06d}', subset=subset,
                        community=int(self.identities.community[primary]), objects=tuple(objects),
                        frame_mask=t < real, label_mask=label_mask, corruption=corruption,
                        snr_db=snr_db, silhouettes=silhouettes, top=top)

    # --- rendering ----------------------------------------------------------------------------

    def _frames(self, rng: np.random.Generator, plan: ClipPlan) -> np.ndarray:
        """uint8 [T, H, W, 3]: gradient background, textured objects, pixel noise; padding 0."""
        size, num_frames = self.config.image_size, self.config.num_frames
        hue = rng.random()
        ends = [colorsys.hsv_to_rgb((hue + rng.uniform(-0.15, 0.15)) % 1.0,
                                            rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.75))
                for _ in range(2)]
        angle = rng.uniform(0.0, 2 * np.pi)
        grid = (np.arange(size) + 0.5) / size - 0.5
        ramp = np.clip(grid[None, :] * math.cos(angle) + grid[:, None] * math.sin(angle) + 0.5,
                       0.0, 1.0)
        background = np.array(ends[0]) + (np.array(ends[1]) - ends[0]) * ramp[..., None]
        frames = np.repeat(background[None], num_frames, axis=0)
        ident = self.identities
        for o, obj in enumerate(plan.objects):
            c = obj.class_id
            u, v = local_coords(obj, num_frames, size)
            shade = 1.0 + ident.texture_contrast[c] * texture_pattern(
                ids_lib.TEXTURES[ident.texture[c]], u, v, ident.texture_period[c],
                ident.texture_angle[c])
            colour = ids_lib.class_rgb(ident, c) * rng.uniform(0.95, 1.05)  # illumination
            inside = plan.top == o
            frames[inside] = shade[inside][:, None] * colour[None]
        frames += rng.normal(0.0, PIXEL_NOISE_STD, frames.shape)
        frames[~plan.frame_mask] = 0.0
        return np.round(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)

    def _envelope(self, emitted: np.ndarray) -> np.ndarray:
        """Per-sample gain of a source: 1 in emitted frames, 0 elsewhere, 20 ms linear ramps."""
        envelope = np.repeat(emitted.astype(np.float64), SAMPLE_RATE)
        half = RAMP_SAMPLES // 2
        for t in np.flatnonzero(emitted[1:] != emitted[:-1]) + 1:
            ramp = np.linspace(0.0, 1.0, RAMP_SAMPLES)
            envelope[t * SAMPLE_RATE - half:t * SAMPLE_RATE + half] = (
                ramp if emitted[t] else ramp[::-1])
        return envelope

    def _audio(self, rng: np.random.Generator, plan: ClipPlan) -> np.ndarray:
        """int16 [T * SAMPLE_RATE]: sounding objects' emitted sounds + white noise at the SNR."""
        num_frames = self.config.num_frames
        num_samples = num_frames * SAMPLE_RATE
        wave = np.zeros(num_samples)
        for obj in plan.objects:
            if not obj.sounding:
                continue
            c = obj.emitted_class
            source = np.tile(np.roll(self.tones[c], int(rng.integers(SAMPLE_RATE))), num_frames)
            band = ids_lib.NOISE_BANDS_HZ[self.identities.noise_band[c]]
            if band is not None:
                noise = ids_lib.band_noise(rng, band, num_samples)
                source = ((source + ids_lib.BAND_NOISE_LEVEL * noise)
                          / math.sqrt(1.0 + ids_lib.BAND_NOISE_LEVEL ** 2))
            wave += rng.uniform(0.7, 1.0) * self._envelope(obj.emitted) * source
        wave += rng.normal(0.0, 10.0 ** (-plan.snr_db / 20.0), num_samples)
        wave[np.repeat(~plan.frame_mask, SAMPLE_RATE)] = 0.0
        return np.clip(np.round(wave * ids_lib.OUTPUT_GAIN * 32768), -32768, 32767).astype(np.int16)

    def render(self, plan: ClipPlan) -> dict:
        """The TFDS feature dict of a planned clip (see data_pipelines/synth_avs.py)."""
        _, image_rng, audio_rng = self._streams(plan.split, plan.index)
        return {
            'uid': plan.uid,
            'subset': plan.subset,
            'frames': self._frames(image_rng, plan),
            'labels': plan.labels(),
            'audio': self._audio(audio_rng, plan),
            'frame_mask': plan.frame_mask,
            'label_mask': plan.label_mask,
            'classes': np.array(plan.classes(), np.int32),
            'object_classes': np.array([o.class_id for o in plan.objects], np.int32),
            'object_sounding': np.array([o.sounding for o in plan.objects], bool),
            'consistency': np.float32(plan.consistency()),
            'corruption': plan.corruption,
            'community': np.int32(plan.community),
        }

    def example(self, split: str, index: int) -> dict:
        """Generates clip `index` of `split` as a TFDS feature dict."""
        return self.render(self.plan(split, index))


def cooccurrence(class_sets, num_classes: int) -> np.ndarray:
    """Class co-occurrence counts over clips. int64 [K+1, K+1], indexed by class id.

    Entry (a, b) counts the clips whose ground-truth class set holds both a and b; the diagonal
    counts the clips holding a. Row and column 0 (background) stay 0.
    """
    counts = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for classes in class_sets:
        idx = np.asarray(sorted(classes), np.int64)
        counts[np.ix_(idx, idx)] += 1
    return counts
