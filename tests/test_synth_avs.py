"""Tests of the SynthAVS generator and TFDS builder (design/SYNTHETIC_AVS.md).

Known answers come from the generative model itself: which objects sound, the corruption of
each clip, and the level bounds of sources (unit RMS x gain in [0.7, 1]) and noise (SNR).
"""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import synth_avs, synth_avs_identities, synth_avs_scenes
from data_pipelines.synth_avs_config import SAMPLE_RATE, SynthAVSConfig
from data_pipelines.synth_avs_scenes import SynthAVSGenerator, cooccurrence
from jax_cavs.data import audio

TINY = synth_avs.SynthAVS.builder_configs['tiny']
# Single-source clips with many corruptions, to check them one by one against the audio.
CORRUPTED = dataclasses.replace(TINY, name='test_corrupted', train_clips_per_class=10,
                                test_clips_per_class=4, multi_source_share=0.0,
                                low_consistency_share=0.7)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _second_rms(example: dict) -> np.ndarray:
    """RMS of each second of a clip's audio, in units of the generator's unit-RMS sources."""
    wave = audio.int16_to_float(example['audio']) / synth_avs_identities.OUTPUT_GAIN
    return np.sqrt((wave.reshape(-1, SAMPLE_RATE) ** 2).mean(1))


def _mean_log_mel(example: dict) -> np.ndarray:
    """Time-averaged VGGish log-mel spectrum of a clip's audio. float32 [64]."""
    return audio.log_mel_frames(audio.int16_to_float(example['audio'])).mean(0)


@pytest.fixture(scope='module')
def tiny():
    return SynthAVSGenerator.from_config(TINY)


@pytest.fixture(scope='module')
def tiny_train(tiny):
    return [tiny.example('train', i) for i in range(TINY.num_clips('train'))]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp('tfds')
    builder = synth_avs.SynthAVS(config='tiny', data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare(file_format='array_record')
    return builder


def test_same_seed_gives_identical_bytes_in_any_order_and_other_seeds_differ(tiny):
    indices = [0, 5, 17, 40]
    again = SynthAVSGenerator.from_config(TINY)
    for i in reversed(indices):  # other generator, other order
        first, second = tiny.example('train', i), again.example('train', i)
        assert first.keys() == second.keys()
        for key in first:
            assert np.asarray(first[key]).tobytes() == np.asarray(second[key]).tobytes(), key
    other = SynthAVSGenerator.from_config(dataclasses.replace(TINY, name='seed1', seed=1))
    for i in indices:
        assert not np.array_equal(tiny.example('train', i)['frames'],
                                  other.example('train', i)['frames'])
        assert not np.array_equal(tiny.example('train', i)['audio'],
                                  other.example('train', i)['audio'])
    assert not np.array_equal(tiny.example('train', 0)['audio'], tiny.example('test', 0)['audio'])


def test_builder_stores_exactly_the_generated_clips(built, tiny):
    source = built.as_data_source('test')
    assert len(source) == TINY.num_clips('test')
    for record in source:
        split, index = _text(record['uid']).split('_')
        want = tiny.example(split, int(index))
        for key, value in want.items():
            got = record[key]
            if isinstance(value, str):
                assert _text(got) == value, key
            else:
                np.testing.assert_array_equal(got, value, err_msg=key)


def test_only_sounding_objects_are_labelled(tiny, tiny_train):
    visible_silent = 0
    for i, example in enumerate(tiny_train):
        sounding = set(example['object_classes'][example['object_sounding']].tolist())
        silent = set(example['object_classes'][~example['object_sounding']].tolist())
        labelled = set(np.unique(example['labels']).tolist()) - {0}
        assert labelled == set(example['classes'].tolist())
        assert labelled <= sounding and not labelled & silent
        plan = tiny.plan('train', i)
        for o, obj in enumerate(plan.objects):
            pixels = plan.top == o
            if not obj.sounding:
                assert np.all(example['labels'][pixels] == 0)
                visible_silent += int(pixels[plan.frame_mask].any())
            else:
                annotated = obj.active & plan.label_mask
                assert np.all(example['labels'][annotated][pixels[annotated]] == obj.class_id)
    assert visible_silent >= 5  # the distractor phenomenon is really there


def test_fallback_placement_keeps_every_sounding_object_visible(monkeypatch):
    monkeypatch.setattr(synth_avs_scenes, 'PLACEMENT_ATTEMPTS', 0)  # always the last resort
    gen = SynthAVSGenerator.from_config(TINY)
    for i in range(TINY.num_clips('train')):
        plan = gen.plan('train', i)
        sounding = [o for o in plan.objects if o.sounding]
        assert plan.classes() == sorted(o.class_id for o in sounding)
        assert all(not o.velocity.any() for o in sounding)
        assert all(o.sounding for o in plan.objects[-len(sounding):])  # drawn on top


def test_lookalike_pairs_look_alike_but_sound_apart():
    config = dataclasses.replace(TINY, name='lookalikes', lookalike_share=0.5,
                                 multi_source_share=0.0, low_consistency_share=0.0,
                                 silent_distractor_prob=0.0, lookalike_distractor_prob=0.0,
                                 train_clips_per_class=10)
    gen = SynthAVSGenerator.from_config(config)
    pairs = gen.identities.lookalike_pairs()
    assert len(pairs) == 2
    rgb, spectra = {}, {}
    for i in range(config.num_clips('train')):
        example = gen.example('train', i)
        c = int(example['classes'][0])
        rgb.setdefault(c, []).append(example['frames'][example['labels'] == c].mean(0))
        spectra.setdefault(c, []).append(_mean_log_mel(example))
    mean_rgb = {c: np.mean(v, 0) for c, v in rgb.items()}
    pair_gap = max(np.linalg.norm(mean_rgb[a] - mean_rgb[b]) for a, b in pairs)
    other_gaps = [np.linalg.norm(mean_rgb[a] - mean_rgb[b]) for a in mean_rgb for b in mean_rgb
                  if a < b and [a, b] not in pairs]
    # Other classes may share a hue (and then differ by shape), so compare with the typical gap.
    assert pair_gap < 0.1 * np.median(other_gaps), (pair_gap, other_gaps)
    # Audio: nearest centroid (3 clips per class) classifies the other clips, pairs included.
    centroids = {c: np.mean(v[:3], 0) for c, v in spectra.items()}
    for c, clips in spectra.items():
        for spectrum in clips[3:]:
            assert min(centroids, key=lambda k: np.sum((centroids[k] - spectrum) ** 2)) == c


def test_cooccurrence_metadata_matches_training_labels(built):
    metadata = built.info.metadata
    num_classes = len(metadata['class_names'])
    class_sets = []
    for record in built.as_data_source('train'):
        annotated = record['labels'][record['label_mask'] & record['frame_mask']]
        class_sets.append(set(np.unique(annotated).tolist()) - {0})
    want = np.zeros((num_classes, num_classes), np.int64)
    for classes in class_sets:
        for a in classes:
            for b in classes:
                want[a, b] += 1
    np.testing.assert_array_equal(np.array(metadata['cooccurrence']), want)
    np.testing.assert_array_equal(cooccurrence(class_sets, num_classes - 1), want)
    # Communities are real: most co-occurrences stay inside one.
    community = np.array(metadata['community_of_class'])
    off_diagonal = want * (1 - np.eye(num_classes, dtype=np.int64))
    same = community[:, None] == community[None, :]
    assert off_diagonal[same].sum() > 2 * off_diagonal[~same].sum()


def test_metadata_describes_classes_communities_and_config(built):
    metadata = built.info.metadata
    names = metadata['class_names']
    assert names[0] == 'background' and len(names) == TINY.num_classes + 1 == len(set(names))
    members = sorted(c for group in metadata['communities'] for c in group)
    assert members == list(range(1, TINY.num_classes + 1))
    assert len(metadata['communities']) == TINY.num_communities
    for a, b in metadata['lookalike_pairs']:
        assert metadata['community_of_class'][a] == metadata['community_of_class'][b]
    assert metadata['config'] == TINY.generator_params()
    assert (metadata['num_frames'], metadata['image_size']) == (5, 32)
    # The metadata survives a reload from disk.
    reloaded = synth_avs.SynthAVS(config='tiny', data_dir=built.data_dir_root)
    assert reloaded.info.metadata['cooccurrence'] == metadata['cooccurrence']


def test_single_and_multi_source_clips_both_exist(tiny_train):
    counts = np.array([len(example['classes']) for example in tiny_train])
    assert np.sum(counts == 1) > 0 and np.sum(counts >= 2) > 0
    for example in tiny_train:
        single = example['object_sounding'].sum() == 1
        assert example['subset'] == ('v1s' if single else 'v1m')


def _heard(gen: SynthAVSGenerator, example: dict, second: int) -> tuple[int, float]:
    """Which class's tone is in one second of a clip, and how clearly.

    Class tones are exactly periodic over a second, so within a second-aligned window a clip's
    magnitude spectrum (1 Hz bins) is the tone's whatever its circular shift, plus noise.
    Returns the class whose tone spectrum has the largest cosine similarity and that
    similarity (white noise alone gives < 0.1; a source at -9 dB SNR about 0.2).
    """
    window = audio.int16_to_float(example['audio'])[second * SAMPLE_RATE:(second + 1) * SAMPLE_RATE]
    spectrum = np.abs(np.fft.rfft(window))
    templates = np.abs(np.fft.rfft(gen.tones[1:], axis=1))
    similarity = templates @ spectrum / (np.linalg.norm(templates, axis=1)
                                         * np.linalg.norm(spectrum))
    return 1 + int(np.argmax(similarity)), float(similarity.max())


def test_corruptions_agree_with_the_audio():
    gen = SynthAVSGenerator.from_config(CORRUPTED)
    num_frames = CORRUPTED.num_frames
    by_kind = {}
    for i in range(CORRUPTED.num_clips('train')):
        example = gen.example('train', i)
        by_kind.setdefault(example['corruption'], []).append(example)
    assert set(by_kind) == {'none', 'weak_snr', 'late_onset', 'early_offset', 'mismatched'}
    test_kinds = {gen.example('test', i)['corruption'] for i in range(CORRUPTED.num_clips('test'))}
    assert test_kinds == {'none'}  # the test split is never corrupted
    for kind, examples in by_kind.items():
        assert len(examples) >= 3, kind
        for example in examples:
            label = int(example['classes'][0])
            consistency, rms = float(example['consistency']), _second_rms(example)
            heard = [_heard(gen, example, t) for t in range(num_frames)]
            if kind in ('none', 'weak_snr'):
                assert all(c == label and clarity > 0.15 for c, clarity in heard), (kind, heard)
            if kind == 'none':
                assert consistency == 1.0
            elif kind == 'weak_snr':  # SNR in [-9, -1] dB maps to consistency in [0.05, 0.45]
                assert 0.05 <= consistency <= 0.45
            elif kind == 'mismatched':
                assert consistency == 0.0
                assert all(c != label and clarity > 0.15 for c, clarity in heard), heard
            else:  # late_onset / early_offset: the labelled source is absent for some seconds
                silent = num_frames - round(consistency * num_frames)
                assert 1 <= silent <= num_frames - 1
                quiet = range(silent) if kind == 'late_onset' else range(num_frames - silent,
                                                                         num_frames)
                for t in range(num_frames):
                    if t in quiet:
                        assert heard[t][1] < 0.15, (kind, t, heard)
                    else:
                        assert heard[t][0] == label and heard[t][1] > 0.15, (kind, t, heard)
                # Noise alone has RMS <= 10^(-10/20) = 0.32; a source at least 0.7.
                loud = [t for t in range(num_frames) if t not in quiet]
                assert rms[list(quiet)].max() < 0.5 * rms[loud].min(), (kind, rms)
    # Source power is in [0.49, 1] and the noise power 10^(-SNR/10): clean clips stay below
    # 1.1, weak-SNR clips above 1.75.
    clean_power = max(np.mean(_second_rms(e) ** 2) for e in by_kind['none'])
    weak_power = min(np.mean(_second_rms(e) ** 2) for e in by_kind['weak_snr'])
    assert clean_power < 1.1 < 1.75 < weak_power


def test_short_clips_are_padded_and_v1s_train_clips_annotated_in_frame_zero():
    config = dataclasses.replace(TINY, name='avsbench_mix', num_frames=10, short_clip_share=0.5,
                                 first_frame_only_share=1.0, train_clips_per_class=3)
    gen = SynthAVSGenerator.from_config(config)
    subsets = set()
    for i in range(config.num_clips('train')):
        example = gen.example('train', i)
        real = int(example['frame_mask'].sum())
        subsets.add(example['subset'])
        assert real in (5, 10)
        np.testing.assert_array_equal(example['frame_mask'], np.arange(10) < real)
        assert np.all(example['frames'][real:] == 0) and np.all(example['labels'][real:] == 0)
        assert np.all(example['audio'][real * SAMPLE_RATE:] == 0)
        if example['subset'] == 'v1s':
            np.testing.assert_array_equal(example['label_mask'], np.arange(10) == 0)
            assert np.all(example['labels'][1:] == 0)
        else:
            np.testing.assert_array_equal(example['label_mask'], example['frame_mask'])
        assert example['subset'] == 'v2' if real == 10 else example['subset'] in ('v1s', 'v1m')
    assert subsets == {'v1s', 'v1m', 'v2'}


def test_objects_move_between_frames(tiny_train):
    moved = 0
    for example in tiny_train:
        c = example['classes'][0]
        first, last = example['labels'][0] == c, example['labels'][-1] == c
        moved += int(not np.array_equal(first, last))
    assert moved > 0.8 * len(tiny_train)


@pytest.mark.parametrize('field, value, message', [
    ('num_classes', 1, 'num_classes'),
    ('corruptions', ('bogus',), 'corruptions'),
    ('low_consistency_share', 1.5, 'low_consistency_share'),
    ('object_radius_range', (0.3, 0.1), 'object_radius_range'),
    ('object_radius_range', (0.04, 0.1), 'at least 3 pixels'),
])
def test_bad_config_values_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        SynthAVSConfig(name='bad', **{field: value})


def test_tfds_lists_the_named_configs():
    assert set(tfds.builder_cls('synth_avs').builder_configs) == {'tiny', 'small', 'avs70',
                                                                   'avs70_224'}
