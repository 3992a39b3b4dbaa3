"""The AVSBench-semantic builder end to end on release trees written from SynthAVS
(data_pipelines/avsbench_*); the AVSBench-object builder (S4, MS3) is tested in
test_avsbench_object.py with this module's helpers.

The known answers are the SynthAVS clips the writer put on disk: every decoded frame, mask,
audio waveform, mask flag and split of the built dataset is compared with them.

Frames are written as JPEG at quality 100 without chroma subsampling. The builder must return
exactly PIL's decoding of those files (they are stored at their own size, so the geometry is the
identity), and that decoding stays within JPEG's rounding of the generator's frames: at quality
100 every quantisation step is 1, so each DCT coefficient is rounded by at most 0.5 (variance
1/12; the orthonormal IDCT keeps it, std ≈ 0.29 grey levels per YCbCr sample), and the YCbCr ->
RGB conversion (gains up to 1.77) plus the integer rounding of both conversions bring the RGB
error to a std of about 0.8 levels. Over the ~10^5 values of the test tree the maximum stays
below 6 std (5 levels) and the mean absolute error below 1 level; we check max <= 6, mean <= 1.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines import (avsbench_layout, avsbench_release, avsbench_semantic,
                            synth_avs)
from jax_cavs.data import avsbench_classes, sources, transforms
from jax_cavs.problems.cavs import scenarios

TINY = synth_avs.SynthAVS.builder_configs['tiny']
# AVSBench-semantic conventions: T = 10, 5-frame v1 clips, v1s train annotated in frame 0 only.
SEMANTIC_SYNTH = dataclasses.replace(
    TINY, name='avs_layout', num_frames=10, train_clips_per_class=2, test_clips_per_class=1,
    short_clip_share=0.5, first_frame_only_share=1.0)
VAL_CLIPS = 3
SIZE = TINY.image_size  # 32: stored at the written size, so the geometry is the identity
JPEG_MAX_ERROR, JPEG_MEAN_ERROR = 6, 1.0


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _build(builder_cls, config, manual_dir, data_dir):
    builder = builder_cls(config=config, data_dir=str(data_dir), file_format='array_record')
    builder.download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _build_semantic(manual_dir, data_dir, image_size=SIZE):
    config = avsbench_semantic.AvsbenchSemanticConfig(name=f'test{image_size}',
                                                      image_size=image_size)
    return _build(avsbench_semantic.AvsbenchSemantic, config, manual_dir, data_dir)


def _records_by_uid(builder, split):
    return {_text(r['uid']): r for r in builder.as_data_source(split)}


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp('avss_release')
    clips = avsbench_layout.write_synth_avs_semantic(str(root), SEMANTIC_SYNTH,
                                                     val_clips=VAL_CLIPS)
    return root, {clip.uid: clip for clip in clips}


@pytest.fixture(scope='module')
def built(written, tmp_path_factory):
    return _build_semantic(written[0], tmp_path_factory.mktemp('tfds'))


def _broken_copy(written, tmp_path):
    root = tmp_path / 'release'
    shutil.copytree(written[0], root)
    return root


def _video(written, subset, split):
    """Folder and clip of the first written video of ``subset`` in ``split``."""
    root, clips = written
    clip = next(c for c in clips.values() if c.subset == subset and c.split == split)
    return os.path.join(root, clip.subset, clip.uid), clip


# ------------------------------------------------------------------------------------------------
# Palette and class order.


def test_palette_is_the_pascal_voc_colormap():
    palette = avsbench_release.voc_palette(71)
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
             7: (128, 128, 128), 8: (64, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128)}
    for index, colour in known.items():
        assert tuple(palette[index]) == colour, index
    assert len({tuple(c) for c in palette}) == 71


def test_cmr_class_order_gives_the_table7_tasks():
    names = avsbench_classes.AVSS_CLASS_NAMES
    assert len(names) == 71 and names[0] == 'background'
    assert list(names[1:]) == sorted(names[1:])
    assert avsbench_classes.S4_CLASS_NAMES[0] == 'background'
    assert len(avsbench_classes.S4_CLASS_NAMES) == 24
    order = avsbench_classes.scenario_class_order('60-10')
    # Disjoint mode with the paper's order: no Louvain reordering, tasks = index ranges.
    scenario = scenarios.build_scenario(
        train_classes=[[c] for c in range(1, 71)], test_classes=[[1]], num_classes=71,
        split='60-10', mode='disjoint', class_order=order)
    assert [names[c] for c in scenario.tasks[1].classes] == [
        'trombone', 'truck', 'trumpet', 'tuba', 'ukulele', 'utv', 'vacuum-cleaner', 'violin',
        'wolf', 'woman']
    assert scenario.tasks[0].classes == tuple(range(1, 61))
    with pytest.raises(ValueError, match='12-4'):
        avsbench_classes.scenario_class_order('12-4')


# ------------------------------------------------------------------------------------------------
# The written tree and the built dataset.


def test_written_tree_has_the_official_layout(written):
    root, clips = written
    with open(root / 'metadata.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == ('vid', 'uid', 's_min', 's_sec', 'a_obj', 'split', 'label')
    assert {(r[1], r[5], r[6]) for r in rows[1:]} == {
        (c.uid, c.split, c.subset) for c in clips.values()}
    with open(root / 'label2idx.json') as f:
        label2idx = json.load(f)
    assert label2idx['background'] == 1
    assert sorted(label2idx.values()) == list(range(1, TINY.num_classes + 2))
    assert {c.subset for c in clips.values()} == {'v1s', 'v1m', 'v2'}
    assert {c.split for c in clips.values()} == {'train', 'val', 'test'}
    v1s_train, clip = _video(written, 'v1s', 'train')
    assert sorted(os.listdir(os.path.join(v1s_train, 'frames'))) == [f'{i}.jpg' for i in range(5)]
    assert os.listdir(os.path.join(v1s_train, 'labels_rgb')) == ['0.png']
    v2, _ = _video(written, 'v2', 'train')
    assert len(os.listdir(os.path.join(v2, 'labels_rgb'))) == 10
    info = soundfile.info(os.path.join(v1s_train, 'audio.wav'))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 5 * 16000)


def test_writer_refuses_clips_that_break_avsbench_conventions(tmp_path):
    """SynthAVS 'tiny' has T = 5 and fully annotated v1s train clips: not AVSBench-semantic."""
    with pytest.raises(ValueError, match='num_frames=10.*first_frame_only_share=1.0'):
        avsbench_layout.write_synth_avs_semantic(str(tmp_path), TINY)


def test_every_video_decodes_to_what_was_written(written, built):
    root, clips = written
    palette = avsbench_release.voc_palette(TINY.num_classes + 1)
    for split in ('train', 'val', 'test'):
        records = _records_by_uid(built, split)
        assert set(records) == {uid for uid, c in clips.items() if c.split == split}
        for uid, record in records.items():
            clip = clips[uid]
            real, annotated = len(clip.frames), len(clip.labels)
            assert (real, annotated) == (
                avsbench_semantic.REAL_FRAMES[clip.subset],
                1 if (clip.subset, split) == ('v1s', 'train') else real)
            assert _text(record['subset']) == clip.subset
            folder = os.path.join(root, clip.subset, uid)
            decoded = np.stack([np.asarray(Image.open(os.path.join(folder, 'frames', f'{i}.jpg')))
                                for i in range(real)])
            np.testing.assert_array_equal(record['frames'][:real], decoded)
            error = np.abs(decoded.astype(int) - clip.frames)
            assert error.max() <= JPEG_MAX_ERROR and error.mean() <= JPEG_MEAN_ERROR, uid
            assert not record['frames'][real:].any()
            # Masks: the PNGs hold the palette colours of the written labels ...
            for i in range(annotated):
                png = np.asarray(Image.open(os.path.join(folder, 'labels_rgb', f'{i}.png')))
                np.testing.assert_array_equal(png, palette[clip.labels[i]])
            # ... and decode back to those labels; padded / unannotated frames are background.
            np.testing.assert_array_equal(record['labels'][:annotated], clip.labels)
            assert not record['labels'][annotated:].any()
            np.testing.assert_array_equal(record['frame_mask'], np.arange(10) < real)
            np.testing.assert_array_equal(record['label_mask'], np.arange(10) < annotated)
            assert record['audio'].shape == (160000,)
            np.testing.assert_array_equal(record['audio'][:len(clip.audio)], clip.audio)
            assert len(clip.audio) == real * 16000 and not record['audio'][len(clip.audio):].any()
            present = np.unique(clip.labels)
            np.testing.assert_array_equal(record['classes'], present[present > 0])


def test_metadata_carries_the_class_names(built):
    metadata = built.info.metadata
    names = json.load(open(os.path.join(built.data_path, 'metadata.json')))['class_names']
    assert names == metadata['class_names']
    assert metadata['class_names'][0] == 'background'
    assert len(metadata['class_names']) == TINY.num_classes + 1
    assert (metadata['num_frames'], metadata['image_size']) == (10, SIZE)


def test_split_geometry_and_resampling(written, tmp_path):
    """Non-square videos: train = short-edge resize + centre crop, val/test = plain resize
    (spec §2.4); a 44.1 kHz stereo wav becomes the 16 kHz channel mean."""
    root = _broken_copy(written, tmp_path)
    palette = avsbench_release.voc_palette(TINY.num_classes + 1)
    expected = {}
    for split in ('train', 'val'):
        folder, clip = _video((root, written[1]), 'v2', split)
        for sub in ('frames', 'labels_rgb'):
            for name in os.listdir(os.path.join(folder, sub)):
                path = os.path.join(folder, sub, name)
                # 32 x 32 -> 48 x 80 (H x W) by nearest, so the masks keep palette colours.
                Image.open(path).resize((80, 48), Image.NEAREST).save(path, quality=100,
                                                                     subsampling=0)
        frames = np.stack([np.asarray(Image.open(os.path.join(folder, 'frames', f'{i}.jpg')))
                           for i in range(10)])
        labels = np.stack([
            avsbench_release.colours_to_labels(
                np.asarray(Image.open(os.path.join(folder, 'labels_rgb', f'{i}.png'))), palette,
                'mask') for i in range(10)])
        geometry = transforms.train_resize_crop if split == 'train' else transforms.eval_resize
        expected[clip.uid] = (split,) + geometry(frames, labels, 32)
        # The two geometries differ on this video (else the check could not tell them apart).
        assert not np.array_equal(transforms.train_resize_crop(frames, labels, 32)[0],
                                  transforms.eval_resize(frames, labels, 32)[0])
    folder, clip = _video((root, written[1]), 'v1m', 'test')
    t = np.arange(5 * 44100) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)], 1)
    soundfile.write(os.path.join(folder, 'audio.wav'),
                    np.round(stereo * 32768).astype(np.int16), 44100, subtype='PCM_16')

    built = _build_semantic(root, tmp_path / 'tfds', image_size=32)
    for uid, (split, want_frames, want_labels) in expected.items():
        record = _records_by_uid(built, split)[uid]
        np.testing.assert_array_equal(record['frames'], want_frames)
        np.testing.assert_array_equal(record['labels'], want_labels)

    record = _records_by_uid(built, 'test')[clip.uid]
    n = np.arange(5 * 16000)
    want = 0.3 * np.sin(2 * np.pi * 440 * n / 16000)  # mean of the channels, at 16 kHz
    got = record['audio'][:5 * 16000] / 32768.0
    # Away from the edges (resampler transients), error = int16 rounding (2 x 1.5e-5) + the
    # resampler's pass-band ripple (< 0.1 % of 0.3).
    np.testing.assert_allclose(got[1000:-1000], want[1000:-1000], atol=1e-3)
    assert not record['audio'][5 * 16000:].any()


# ------------------------------------------------------------------------------------------------
# Broken inputs: each error names the offending file.


def _expect_error(root, tmp_path, error, path):
    with pytest.raises(error, match=re.escape(str(path))):
        _build_semantic(root, tmp_path / 'tfds')


def test_missing_wav_is_named(written, tmp_path):
    root = _broken_copy(written, tmp_path)
    folder, _ = _video((root, written[1]), 'v2', 'test')
    os.remove(os.path.join(folder, 'audio.wav'))
    _expect_error(root, tmp_path, FileNotFoundError, os.path.join(folder, 'audio.wav'))


@pytest.mark.parametrize('sub,name', [('frames', '4.jpg'), ('labels_rgb', '1.png')])
def test_frame_count_mismatch_is_named(written, tmp_path, sub, name):
    """A v1m video missing its fifth frame; a v1s train video with a second mask."""
    root = _broken_copy(written, tmp_path)
    subset = 'v1m' if sub == 'frames' else 'v1s'
    folder, _ = _video((root, written[1]), subset, 'train')
    path = os.path.join(folder, sub, name)
    if sub == 'frames':
        os.remove(path)
    else:
        shutil.copy(os.path.join(folder, sub, '0.png'), path)
    _expect_error(root, tmp_path, ValueError, os.path.join(folder, sub))


def test_colour_outside_the_palette_is_named(written, tmp_path):
    """AVSBench's loader would silently call this pixel background; we refuse."""
    root = _broken_copy(written, tmp_path)
    folder, _ = _video((root, written[1]), 'v1m', 'test')
    path = os.path.join(folder, 'labels_rgb', '2.png')
    mask = np.asarray(Image.open(path)).copy()
    mask[3, 4] = (1, 2, 3)
    Image.fromarray(mask).save(path)
    with pytest.raises(ValueError, match=re.escape(path) + r'.*\(1, 2, 3\) x1 \(first at row 3, '
                                                           r'column 4\)'):
        _build_semantic(root, tmp_path / 'tfds')


def test_metadata_row_without_folder_is_named(written, tmp_path):
    root = _broken_copy(written, tmp_path)
    with open(root / 'metadata.csv', 'a', newline='') as f:
        csv.writer(f).writerow(['ghost', 'ghost_0', 0, 0, 'dog', 'train', 'v2'])
    _expect_error(root, tmp_path, FileNotFoundError, os.path.join(root, 'v2', 'ghost_0'))


def test_undecodable_image_is_named(written, tmp_path):
    root = _broken_copy(written, tmp_path)
    folder, _ = _video((root, written[1]), 'v2', 'train')
    path = os.path.join(folder, 'frames', '7.jpg')
    with open(path, 'wb') as f:
        f.write(b'not a jpeg')
    _expect_error(root, tmp_path, ValueError, path)


def test_truncated_wav_is_named(written, tmp_path):
    """A wav cut short (an interrupted copy): too little audio for the video's frames."""
    root = _broken_copy(written, tmp_path)
    folder, _ = _video((root, written[1]), 'v2', 'train')
    path = os.path.join(folder, 'audio.wav')
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 3])
    _expect_error(root, tmp_path, ValueError, path)


def test_frame_and_mask_size_mismatch_is_named(written, tmp_path):
    root = _broken_copy(written, tmp_path)
    folder, _ = _video((root, written[1]), 'v1m', 'train')
    path = os.path.join(folder, 'labels_rgb', '1.png')
    mask = np.asarray(Image.open(path))
    Image.fromarray(np.ascontiguousarray(mask[:-2])).save(path)
    _expect_error(root, tmp_path, ValueError, path)


def test_missing_release_names_the_manual_directory(tmp_path):
    _expect_error(tmp_path / 'nowhere', tmp_path, FileNotFoundError, tmp_path / 'nowhere')


def test_load_dataset_reads_the_default_manual_directory(written, tmp_path):
    """sources.load_dataset builds avsbench_semantic from DATA_DIR/downloads/manual/
    avsbench_semantic (TFDS's default manual directory) and indexes its class sets."""
    data_dir = tmp_path / 'data'
    shutil.copytree(written[0], data_dir / 'downloads' / 'manual' / 'avsbench_semantic')
    dataset = sources.load_dataset('avsbench_semantic', 'default', str(data_dir),
                                   overrides={'image_size': SIZE})
    assert dataset.num_frames == 10 and dataset.image_size == SIZE
    assert dataset.class_names[0] == 'background'
    train = [c for c in written[1].values() if c.split == 'train']
    by_uid = dict(zip(dataset.index['train'].uid, dataset.index['train'].classes))
    for clip in train:
        present = np.unique(clip.labels)
        assert by_uid[clip.uid] == tuple(int(c) for c in present if c)


def test_command_line_build_of_a_registered_config(written, tmp_path):
    """``python -m data_pipelines.avsbench_semantic --manual_dir M --data_dir D --config res64``
    stores the frames at 64x64 (upsampled from the 32x32 tree, val/test by a plain resize)."""
    avsbench_release.build_from_command_line(
        avsbench_semantic.AvsbenchSemantic, 'test',
        ['--manual_dir', str(written[0]), '--data_dir', str(tmp_path), '--config', 'res64'])
    source = tfds.data_source('avsbench_semantic/res64', data_dir=str(tmp_path), split='test')
    record = source[0]
    clip = written[1][_text(record['uid'])]
    want = transforms.resize_frames(clip.frames[:1], 64, 64)
    assert record['frames'].shape == (10, 64, 64, 3)
    # Bilinear upsampling averages with non-negative weights summing to 1, so the JPEG error
    # does not grow; + 1 for the rounding of both resized images.
    assert np.abs(record['frames'][:1].astype(int) - want).max() <= JPEG_MAX_ERROR + 1

