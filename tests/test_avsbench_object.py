"""The AVSBench-object builder (S4, MS3; data_pipelines/avsbench_object.py) end to end on
release trees written from SynthAVS: every frame (PNG, lossless), mask, audio waveform and mask
flag of the built dataset equals what the writer put on disk, and a mask that is not binary is
named. Helpers come from test_avsbench.py.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from PIL import Image

from data_pipelines import avsbench_layout, avsbench_object
from test_avsbench import SIZE, TINY, _build, _records_by_uid, _text


# ------------------------------------------------------------------------------------------------
# AVSBench-object (S4, MS3).


OBJECT_SYNTH = {
    's4': dataclasses.replace(TINY, name='s4_layout', train_clips_per_class=2,
                              test_clips_per_class=1, multi_source_share=0.0,
                              first_frame_only_share=1.0),
    'ms3': dataclasses.replace(TINY, name='ms3_layout', train_clips_per_class=2,
                               test_clips_per_class=1, multi_source_share=1.0),
}


@pytest.mark.parametrize('protocol', ['s4', 'ms3'])
def test_object_builder_decodes_what_was_written(tmp_path, protocol):
    clips = avsbench_layout.synth_avs_object_clips(OBJECT_SYNTH[protocol], protocol,
                                                   val_clips=2)
    assert {c.split for c in clips} == {'train', 'val', 'test'}
    root = tmp_path / 'avsbench_data'
    avsbench_layout.write_object_release(str(root), protocol, clips)
    config = avsbench_object.AvsbenchObjectConfig(name=f'{protocol}32', protocol=protocol,
                                                  image_size=SIZE)
    built = _build(avsbench_object.AvsbenchObject, config, root, tmp_path / 'tfds')
    class_names = built.info.metadata['class_names']
    if protocol == 's4':
        assert class_names == ['background'] + sorted({c.category for c in clips})
    else:
        assert class_names == ['background', 'sounding']
    for split in ('train', 'val', 'test'):
        records = _records_by_uid(built, split)
        assert set(records) == {c.name for c in clips if c.split == split}
        for clip in (c for c in clips if c.split == split):
            record = records[clip.name]
            annotated = 1 if (protocol, split) == ('s4', 'train') else 5
            assert len(clip.masks) == annotated
            np.testing.assert_array_equal(record['frames'], clip.frames)  # PNG: lossless
            label = class_names.index(clip.category) if protocol == 's4' else 1
            np.testing.assert_array_equal(record['labels'][:annotated], clip.masks * label)
            assert not record['labels'][annotated:].any()
            np.testing.assert_array_equal(record['label_mask'], np.arange(5) < annotated)
            assert record['frame_mask'].all()
            np.testing.assert_array_equal(record['audio'], clip.audio)
            assert _text(record['category']) == (clip.category or '')


def test_object_mask_that_is_not_binary_is_named(tmp_path):
    clips = avsbench_layout.synth_avs_object_clips(OBJECT_SYNTH['s4'], 's4', val_clips=2)
    root = tmp_path / 'avsbench_data'
    avsbench_layout.write_object_release(str(root), 's4', clips)
    clip = next(c for c in clips if c.split == 'test')
    path = avsbench_object.clip_paths(str(root), 's4', clip.name, clip.category, 'test', 5).masks[3]
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 128
    Image.fromarray(mask).save(path)
    config = avsbench_object.AvsbenchObjectConfig(name='s4_32', protocol='s4', image_size=SIZE)
    with pytest.raises(ValueError, match=re.escape(path) + r'.*\[128\]'):
        _build(avsbench_object.AvsbenchObject, config, root, tmp_path / 'tfds')
