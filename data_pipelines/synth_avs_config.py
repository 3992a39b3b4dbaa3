"""Configuration of the SynthAVS procedural benchmark (see design/SYNTHETIC_AVS.md).

`SynthAVSConfig` is a TFDS `BuilderConfig` whose extra fields are every knob of the
generator, so a test or an experiment can build a variant with
`SynthAVS(config=SynthAVSConfig(name='mine', ...))` or through
`jax_cavs.data.sources.load_dataset(..., overrides={...})`.

The named variants (`NAMED_CONFIGS`) are:
- `tiny`: 8 classes in 2 communities, 32x32, T=5, 6 train / 2 test clips per class. For tests;
  builds in a few seconds.
- `small`: 16 classes in 4 communities, 64x64, T=5, 30 train / 10 test clips per class. The
  CPU default of every experiment config.
- `avs70`: 70 classes in 10 communities (AVSBench-semantic's class count, so the paper's
  60-10 / 60-5 / 65-1 splits apply unchanged), 64x64, T=5, 12 train / 4 test clips per class.
- `avs70_224`: the same classes at 224x224 with T=10 frames and AVSBench-semantic's clip mix:
  about half the clips are 5-frame "v1" clips padded to 10 frames, and single-source v1 train
  clips are annotated in frame 0 only (AVSBench v1s train, spec_cavs.md §1.1).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

SAMPLE_RATE = 16_000  # Hz; one second of audio per video frame (AVSBench, spec_cavs.md §2.5).
SPLITS = ('train', 'test')
CORRUPTIONS = ('weak_snr', 'late_onset', 'early_offset', 'mismatched')
MAX_CLASSES = 96  # 8 shape families x 12 named hues of distinct visual identities.
MAX_OBJECTS = 4


def _check_range(config_name: str, field: str, value: tuple[float, float], lo: float,
                 hi: float) -> None:
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ValueError(
            f'SynthAVSConfig {config_name!r}: {field}={value!r} must be a pair (low, high) with '
            f'{lo} <= low <= high <= {hi}.')


@dataclasses.dataclass(eq=False)
class SynthAVSConfig(tfds.core.BuilderConfig):
    """All knobs of the SynthAVS generator (a TFDS BuilderConfig, so it names a dataset variant).

    Counts:
        num_classes: sounding-object classes K, excluding background (labels are 0..K).
        num_communities: groups of classes that co-occur; a clip draws mostly from one.
        image_size: frames are square `image_size` x `image_size`.
        num_frames: T, frames per clip; each frame comes with one second of 16 kHz audio.
        train_clips_per_class / test_clips_per_class: clips per split are
            `num_classes * clips_per_class`; clip i has class `1 + i % num_classes` as its
            primary sounding object, so every class leads the same number of clips.
    Scene:
        max_objects: at most this many objects (1..4) per clip.
        max_sounding: at most this many sounding objects in a multi-source clip (>= 2).
        multi_source_share: share of clips with 2..max_sounding sounding objects (CIM-style);
            the rest have exactly one (CIS-style).
        cross_community_prob: probability that a non-primary object comes from any community
            rather than from the primary's one.
        silent_distractor_prob: probability that a clip has silent distractors (visible,
            unlabelled objects of known classes).
        lookalike_share: share of the classes that belong to a look-alike pair (same shape and
            hue, differing by a faint texture and by their sound).
        lookalike_distractor_prob: probability that the primary's look-alike partner is added as
            a silent distractor (the case only audio can resolve).
        texture_contrast / lookalike_texture_contrast: brightness modulation of ordinary classes'
            textures and of the textured member of a look-alike pair.
        object_radius_range: object radius as a fraction of image_size.
        max_speed: largest object speed in image_size fractions per frame (objects move linearly
            and may leave or enter the frame).
        intermittent_share: share of the secondary sounding objects that sound (and are
            labelled) in a contiguous part of the clip only.
    Modal consistency:
        low_consistency_share: share of *train* clips whose audio disagrees with the labels in
            one of the ways listed in `corruptions` (applied to the primary object). The test
            split is always consistent.
        corruptions: subset of ('weak_snr', 'late_onset', 'early_offset', 'mismatched').
        snr_db_range: SNR of consistent clips (dB, noise vs the unit-power sources).
        weak_snr_db_range: SNR of 'weak_snr' clips.
    AVSBench mirroring:
        short_clip_share: share of clips with only `num_frames // 2` real frames, zero-padded to
            `num_frames` (AVSBench v1 clips padded to T=10).
        first_frame_only_share: share of single-source train clips of the 'v1s' subset (clips
            with at most 5 real frames) that are annotated in frame 0 only (AVSBench v1s train).
    seed: every random draw derives from it; clip i of split s uses the stream
        `SeedSequence([seed, split_id(s), i])`, so clips can be generated in any order.
    """

    seed: int = 0
    num_classes: int = 16
    num_communities: int = 4
    image_size: int = 64
    num_frames: int = 5
    train_clips_per_class: int = 30
    test_clips_per_class: int = 10
    max_objects: int = 4
    max_sounding: int = 3
    multi_source_share: float = 0.35
    cross_community_prob: float = 0.15
    silent_distractor_prob: float = 0.6
    lookalike_share: float = 0.25
    lookalike_distractor_prob: float = 0.5
    texture_contrast: float = 0.35
    lookalike_texture_contrast: float = 0.12
    object_radius_range: tuple[float, float] = (0.12, 0.24)
    max_speed: float = 0.06
    intermittent_share: float = 0.3
    low_consistency_share: float = 0.2
    corruptions: tuple[str, ...] = CORRUPTIONS
    snr_db_range: tuple[float, float] = (10.0, 25.0)
    weak_snr_db_range: tuple[float, float] = (-9.0, -1.0)
    short_clip_share: float = 0.0
    first_frame_only_share: float = 0.0

    def __post_init__(self):
        name = self.name
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f'SynthAVSConfig {name!r}: num_classes={self.num_classes} must be in '
                             f'[2, {MAX_CLASSES}] (distinct shape x hue identities).')
        if not 1 <= self.num_communities <= self.num_classes:
            raise ValueError(f'SynthAVSConfig {name!r}: num_communities={self.num_communities} '
                             f'must be in [1, num_classes={self.num_classes}].')
        if self.image_size < 16:
            raise ValueError(f'SynthAVSConfig {name!r}: image_size={self.image_size} must be '
                             '>= 16.')
        if not 2 <= self.num_frames <= 24:
            raise ValueError(f'SynthAVSConfig {name!r}: num_frames={self.num_frames} must be in '
                             '[2, 24] (24 keeps T log-mel examples inside T seconds of audio).')
        if self.train_clips_per_class < 1 or self.test_clips_per_class < 1:
            raise ValueError(f'SynthAVSConfig {name!r}: clips per class must be >= 1.')
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f'SynthAVSConfig {name!r}: max_objects={self.max_objects} must be in '
                             f'[1, {MAX_OBJECTS}].')
        if self.multi_source_share > 0 and not 2 <= self.max_sounding <= self.max_objects:
            raise ValueError(f'SynthAVSConfig {name!r}: max_sounding={self.max_sounding} must be '
                             f'in [2, max_objects={self.max_objects}] when multi_source_share > 0.')
        for field in ('multi_source_share', 'cross_community_prob', 'silent_distractor_prob',
                      'lookalike_share', 'lookalike_distractor_prob', 'texture_contrast',
                      'lookalike_texture_contrast', 'intermittent_share', 'low_consistency_share',
                      'short_clip_share', 'first_frame_only_share'):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'SynthAVSConfig {name!r}: {field}={value} must be in [0, 1].')
        if not 0.0 <= self.max_speed <= 0.5:
            raise ValueError(f'SynthAVSConfig {name!r}: max_speed={self.max_speed} must be in '
                             '[0, 0.5] (image fractions per frame).')
        _check_range(name, 'object_radius_range', self.object_radius_range, 0.03, 0.4)
        if self.object_radius_range[0] * self.image_size < 3:
            raise ValueError(f'SynthAVSConfig {name!r}: objects must be at least 3 pixels in '
                             f'radius, but object_radius_range[0] * image_size = '
                             f'{self.object_radius_range[0] * self.image_size:.2f}.')
        _check_range(name, 'snr_db_range', self.snr_db_range, -30.0, 60.0)
        _check_range(name, 'weak_snr_db_range', self.weak_snr_db_range, -30.0, 60.0)
        unknown = sorted(set(self.corruptions) - set(CORRUPTIONS))
        if unknown or (self.low_consistency_share > 0 and not self.corruptions):
            raise ValueError(f'SynthAVSConfig {name!r}: corruptions={self.corruptions!r} must be a '
                             f'non-empty subset of {CORRUPTIONS}.')
        # Lists from JSON overrides become tuples so the config stays hashable and comparable.
        for field in ('object_radius_range', 'snr_db_range', 'weak_snr_db_range', 'corruptions'):
            setattr(self, field, tuple(getattr(self, field)))

    def generator_params(self) -> dict:
        """The generator knobs (every field except TFDS's own), JSON-serialisable."""
        base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self) if f.name not in base}

    def num_clips(self, split: str) -> int:
        """Number of clips of `split` ('train' or 'test')."""
        if split not in SPLITS:
            raise ValueError(f'Unknown SynthAVS split {split!r}; expected one of {SPLITS}.')
        per_class = self.train_clips_per_class if split == 'train' else self.test_clips_per_class
        return self.num_classes * per_class


NAMED_CONFIGS = (
    SynthAVSConfig(
        name='tiny',
        description='8 classes / 2 communities, 32x32, T=5, 6+2 clips per class (tests).',
        num_classes=8, num_communities=2, image_size=32, num_frames=5,
        train_clips_per_class=6, test_clips_per_class=2),
    SynthAVSConfig(
        name='small',
        description='16 classes / 4 communities, 64x64, T=5, 30+10 clips per class (CPU default).',
        num_classes=16, num_communities=4, image_size=64, num_frames=5,
        train_clips_per_class=30, test_clips_per_class=10),
    SynthAVSConfig(
        name='avs70',
        description='70 classes / 10 communities (AVSBench-semantic count), 64x64, T=5, '
                    '12+4 clips per class.',
        num_classes=70, num_communities=10, image_size=64, num_frames=5,
        train_clips_per_class=12, test_clips_per_class=4),
    SynthAVSConfig(
        name='avs70_224',
        description='70 classes / 10 communities at 224x224, T=10, with AVSBench-semantic\'s mix '
                    'of padded 5-frame v1 clips and first-frame-only v1s train annotations.',
        num_classes=70, num_communities=10, image_size=224, num_frames=10,
        train_clips_per_class=12, test_clips_per_class=4,
        short_clip_share=0.45, first_frame_only_share=1.0),
)
