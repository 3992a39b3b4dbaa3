"""Tests of jax_cavs.data.sources: build-once loading, the class index cache, bad input."""

import json
import os
import shutil

import numpy as np
import pytest

from data_pipelines import synth_avs
from jax_cavs.data import sources


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def tiny(data_dir):
    return sources.load_dataset('synth_avs', 'tiny', data_dir)


def _decoded_facts(source):
    """(uid, GT classes, consistency, corruption) of every record, straight from the records."""
    facts = []
    for record in source:
        annotated = record['labels'][record['label_mask'] & record['frame_mask']]
        classes = tuple(int(c) for c in np.unique(annotated) if c != 0)
        facts.append((record['uid'].decode(), classes, float(record['consistency']),
                      record['corruption'].decode()))
    return facts


def test_dataset_fields(tiny):
    config = synth_avs.SynthAVS.builder_configs['tiny']
    assert tiny.num_classes == config.num_classes + 1 == len(tiny.class_names)
    assert tiny.class_names[0] == 'background'
    assert (tiny.num_frames, tiny.image_size) == (config.num_frames, config.image_size)
    assert tiny.config == 'tiny' and tiny.metadata['config'] == config.generator_params()
    for split in ('train', 'test'):
        assert len(tiny.sources[split]) == config.num_clips(split) == len(tiny.index[split])
    record = tiny.sources['train'][0]
    assert record['frames'].shape == (5, 32, 32, 3) and record['audio'].shape == (5 * 16000,)


def test_class_index_equals_a_direct_decode(tiny):
    for split in ('train', 'test'):
        index = tiny.index[split]
        facts = _decoded_facts(tiny.sources[split])
        assert list(index.uid) == [f[0] for f in facts]
        assert list(index.classes) == [f[1] for f in facts]
        np.testing.assert_array_equal(index.consistency,
                                      np.array([f[2] for f in facts], np.float32))
        assert list(index.corruption) == [f[3] for f in facts]
        # The generator's own `classes` feature agrees with the decoded labels.
        assert [tuple(r['classes'].tolist()) for r in tiny.sources[split]] == list(index.classes)
    presence = tiny.index['train'].presence(tiny.num_classes)
    assert presence.shape == (len(tiny.index['train']), tiny.num_classes)
    assert not presence[:, 0].any()
    assert [tuple(np.flatnonzero(row)) for row in presence] == list(tiny.index['train'].classes)


def test_second_load_reuses_dataset_and_index(tiny, data_dir, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise AssertionError('regenerated on a second load')

    monkeypatch.setattr(synth_avs.SynthAVS, '_generate_examples', fail)
    monkeypatch.setattr(sources, 'build_class_index', fail)
    again = sources.load_dataset('synth_avs', 'tiny', data_dir)
    err = capsys.readouterr().err
    assert 'Building' not in err and 'Indexing' not in err
    for split in ('train', 'test'):
        first, second = tiny.index[split], again.index[split]
        assert (first.uid, first.classes, first.corruption, first.subset) == (
            second.uid, second.classes, second.corruption, second.subset)
        np.testing.assert_array_equal(first.consistency, second.consistency)


def test_overrides_build_a_separate_variant_and_say_so(tiny, data_dir, capsys):
    other = sources.load_dataset('synth_avs', 'tiny', data_dir,
                                 overrides={'seed': 1, 'train_clips_per_class': 2,
                                            'test_clips_per_class': 1})
    err = capsys.readouterr().err
    assert 'Building synth_avs/tiny_custom_' in err and 'Indexing' in err
    assert other.config.startswith('tiny_custom_') and other.data_path != tiny.data_path
    assert other.metadata['config']['seed'] == 1
    assert len(other.sources['train']) == 2 * 8 and len(other.sources['test']) == 8
    by_uid = {r['uid']: r['audio'] for r in tiny.sources['train']}
    record = other.sources['train'][0]
    assert not np.array_equal(record['audio'], by_uid[record['uid']])


def test_corrupted_cache_is_reported_with_the_fix(tiny, tmp_path):
    copy = tmp_path / 'tfds'
    shutil.copytree(os.path.dirname(os.path.dirname(os.path.dirname(tiny.data_path))), copy)
    cache = copy / 'synth_avs' / 'tiny' / '1.0.0' / 'class_index_test.json'
    cache.write_text('{"format": 1, "uid": [')
    with pytest.raises(ValueError, match=r'class_index_test.json is corrupted.*Delete the file'):
        sources.load_dataset('synth_avs', 'tiny', str(copy))
    data = tiny.index['test'].to_json()
    data['classes'][0] = [99]
    cache.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r'classes\[0\]=\[99\]'):
        sources.load_dataset('synth_avs', 'tiny', str(copy))
    cache.unlink()  # the documented fix
    rebuilt = sources.load_dataset('synth_avs', 'tiny', str(copy))
    assert rebuilt.index['test'].classes == tiny.index['test'].classes


@pytest.mark.parametrize('name, config, overrides, message', [
    ('no_such_dataset', 'tiny', None, r"Unknown dataset 'no_such_dataset'.*synth_avs"),
    ('synth_avs', 'huge', None, r"Unknown config 'huge'.*'small'"),
    ('synth_avs', 'tiny', {'colour': 1}, r"Unknown override\(s\) \['colour'\].*'seed'"),
    ('synth_avs', 'tiny', {'num_classes': 0}, r'Invalid overrides.*num_classes'),
    ('synth_avs_config', 'tiny', None, r'does not register a TFDS builder'),
])
def test_bad_names_are_reported(tmp_path, name, config, overrides, message):
    with pytest.raises(ValueError, match=message):
        sources.load_dataset(name, config, str(tmp_path), overrides=overrides)


def test_unusable_data_dir_is_reported(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    with pytest.raises(ValueError, match=r'Cannot create data_dir .*a_file'):
        sources.load_dataset('synth_avs', 'tiny', str(blocker / 'sub'))


def test_sources_pickle_for_grain_worker_processes(tiny):
    """grain's worker processes receive the data source by pickle."""
    import pickle
    source = tiny.sources['train']
    copy = pickle.loads(pickle.dumps(source))
    assert len(copy) == len(source)
    np.testing.assert_array_equal(copy[3]['labels'], source[3]['labels'])
