"""TFDS builder of SynthAVS, the embedded audio-visual segmentation benchmark.

Build (array_record, no TensorFlow needed) and load, e.g. the CPU default, from Python:

    from jax_cavs.data import sources
    dataset = sources.load_dataset('synth_avs', 'small', '~/tensorflow_datasets')

or build directly with `SynthAVS(config='small', data_dir=DIR, file_format='array_record')
.download_and_prepare()` and read with `tfds.data_source('synth_avs/small', data_dir=DIR)`.

The generator lives in synth_avs_config.py (knobs, named variants), synth_avs_identities.py
(what classes look and sound like), synth_avs_objects.py (placed objects: shapes, textures,
occlusion) and synth_avs_scenes.py (clips); design/SYNTHETIC_AVS.md says
what the benchmark must exhibit. Records are stored in TFDS's hashed key order, so a record
index is not the clip's generation index; `uid` ('<split>_<index>') names the clip.

Features of a clip (T = num_frames, S = image_size, K = num_classes):
    uid, subset ('v1s' single-source / 'v1m' multi-source clips of <= 5 real frames, 'v2'
        longer ones, as AVSBench-semantic's subsets), corruption ('none', 'weak_snr',
        'late_onset', 'early_offset', 'mismatched'): Text.
    frames uint8 [T, S, S, 3]; labels uint8 [T, S, S] (0 = background, 1..K = sounding
        objects); audio int16 [T * 16000] (1 s per frame); all zlib-compressed.
    frame_mask bool [T] (real frames), label_mask bool [T] (annotated frames).
    classes int32 [n] (sorted ground-truth classes of the annotated frames), object_classes
        int32 [m] and object_sounding bool [m] (every object drawn, bottom to top).
    consistency float32 (true audio-visual consistency in [0, 1]), community int32 (community of
        the clip's primary class).
Metadata (metadata.json): class_names (K+1, 'background' first), num_frames, image_size,
community_of_class (K+1, -1 for background), communities (classes of each community),
lookalike_pairs, cooccurrence ([K+1, K+1] counts of training clips whose ground-truth class set
holds both classes; diagonal = clips holding the class), config (every generator knob).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.synth_avs_config import NAMED_CONFIGS, SAMPLE_RATE, SynthAVSConfig
from data_pipelines.synth_avs_scenes import SynthAVSGenerator, cooccurrence

__all__ = ['SynthAVS', 'SynthAVSConfig']

_DESCRIPTION = """\
SynthAVS: procedurally generated audio-visual segmentation clips with sounding objects, silent
distractors, look-alike classes that differ by sound, class communities, single- and
multi-source clips and a controlled share of clips with low audio-visual consistency.
"""


class SynthAVS(tfds.core.GeneratorBasedBuilder):
    """SynthAVS clips as a TFDS dataset ('train' and 'test' splits)."""

    name = 'synth_avs'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First release.'}
    BUILDER_CONFIGS = list(NAMED_CONFIGS)
    DEFAULT_CONFIG_NAME = 'small'

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default resolves the file through importlib_resources when the builder lives
        # in a package; that package is not installed here (an optional etils[epath] extra),
        # and this plain path is what the default returns for a file on disk anyway.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        t, s = cfg.num_frames, cfg.image_size
        zlib = tfds.features.Encoding.ZLIB
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                'uid': tfds.features.Text(),
                'subset': tfds.features.Text(),
                'frames': tfds.features.Tensor(shape=(t, s, s, 3), dtype=np.uint8, encoding=zlib),
                'labels': tfds.features.Tensor(shape=(t, s, s), dtype=np.uint8, encoding=zlib),
                'audio': tfds.features.Tensor(shape=(t * SAMPLE_RATE,), dtype=np.int16,
                                              encoding=zlib),
                'frame_mask': tfds.features.Tensor(shape=(t,), dtype=np.bool_),
                'label_mask': tfds.features.Tensor(shape=(t,), dtype=np.bool_),
                'classes': tfds.features.Tensor(shape=(None,), dtype=np.int32),
                'object_classes': tfds.features.Tensor(shape=(None,), dtype=np.int32),
                'object_sounding': tfds.features.Tensor(shape=(None,), dtype=np.bool_),
                'consistency': tfds.features.Scalar(dtype=np.float32),
                'corruption': tfds.features.Text(),
                'community': tfds.features.Scalar(dtype=np.int32),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        generator = SynthAVSGenerator.from_config(cfg)
        identities = generator.identities
        train_sets = [generator.plan('train', i).classes() for i in range(cfg.num_clips('train'))]
        self.info.metadata.update({
            'class_names': list(identities.names),
            'num_frames': cfg.num_frames,
            'image_size': cfg.image_size,
            'community_of_class': identities.community.tolist(),
            'communities': identities.communities(),
            'lookalike_pairs': identities.lookalike_pairs(),
            'cooccurrence': cooccurrence(train_sets, cfg.num_classes).tolist(),
            'config': cfg.generator_params(),
        })
        return {split: self._generate_examples(generator, split) for split in ('train', 'test')}

    def _generate_examples(self, generator: SynthAVSGenerator, split: str):
        for index in range(generator.config.num_clips(split)):
            example = generator.example(split, index)
            yield example['uid'], example
