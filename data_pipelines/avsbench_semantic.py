"""TFDS builder of AVSBench-semantic (AVSS), read from the official release (spec_cavs §1.1, §2).

Build (array_record; the release is read from the TFDS manual directory, nothing is downloaded):

    # without TensorFlow (this project's environment):
    python -m data_pipelines.avsbench_semantic --manual_dir /data/AVSBench-semantic \\
        --data_dir ~/tensorflow_datasets [--config default]
    # with TensorFlow installed, the TFDS command line does the same:
    tfds build avsbench_semantic --imports data_pipelines.avsbench_semantic \\
        --manual_dir /data/AVSBench-semantic --data_dir ~/tensorflow_datasets \\
        --file_format array_record --config default

`jax_cavs.data.sources.load_dataset('avsbench_semantic', 'default', DATA_DIR)` builds it on first
use from TFDS's default manual directory, ``DATA_DIR/downloads/manual`` (the release either
directly there or in its subfolder ``avsbench_semantic/``). Read it with
``tfds.data_source('avsbench_semantic/default', data_dir=DATA_DIR)``.

Release layout (the directory holding metadata.csv; spec §2.1, AVSBench ``color_dataloader.py``):

    metadata.csv                         header vid,uid,s_min,s_sec,a_obj,split,label; the
                                         builder uses uid (folder), label (subset) and split
    label2idx.json                       {"background": 1, "accordion": 2, ..., "woman": 71}
    {label}/{uid}/frames/{i}.jpg         i = 0..4 (v1s, v1m) or 0..9 (v2)
    {label}/{uid}/labels_rgb/{i}.png     colour masks; only 0.png for v1s *train* videos
    {label}/{uid}/audio.wav              any rate / channel count; mixed to mono, resampled to
                                         16 kHz (soxr via librosa; AVSBench uses resampy)

Conversion (mirrors AVSBench's ``V2Dataset``):
- label = palette index: colour j of the PASCAL-VOC bit-interleaved colormap is class j - 1 of
  label2idx.json (1-based, background = 1), so labels are 0 = background, 1..K-1 = classes.
  A colour outside the palette is an **error naming the file**. (AVSBench's
  ``color_mask_to_label`` silently maps it to background via an argmax over all-False rows; we
  refuse instead, because such a pixel means a corrupt or foreign mask.)
- train frames: short edge resized to ``image_size`` (PIL bilinear), centre crop; val/test:
  direct resize to ``image_size`` x ``image_size``. Masks alike with nearest neighbour
  (``jax_cavs.data.transforms``, spec §2.4). The stored frames are therefore exactly what
  AVSBench feeds its network at ``image_size`` = 224, before normalisation.
- every video is padded to T = 10 frames with zero frames and zero (background) labels:
  ``frame_mask`` = the real frames (5 for v1s/v1m, 10 for v2), ``label_mask`` = the annotated
  frames (frame 0 only for v1s train; all real frames otherwise). AVSBench's own
  ``gt_temporal_mask_flag`` is [1, 0, ..., 0] for v1s in every split, but only its training loss
  reads it; v1s val/test videos do have 5 annotated masks, which ``label_mask`` reports.
- audio: 16 kHz mono int16, zero-padded or cut to 10 s (160,000 samples).

Features of a video (S = image_size):
    uid, subset ('v1s' | 'v1m' | 'v2'): Text.
    frames uint8 [10, S, S, 3]; labels uint8 [10, S, S]; audio int16 [160000]; zlib-compressed.
    frame_mask, label_mask bool [10]; classes int32 [n] (sorted classes of the annotated frames,
    background excluded).
The same names, dtypes and meanings as SynthAVS (``data_pipelines/synth_avs.py``), so one input
pipeline reads both. Splits: train, val, test. Metadata (metadata.json): class_names (K names,
background first, from label2idx.json), num_frames (10), image_size, subsets.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import avsbench_release as release

NUM_FRAMES = 10
SAMPLE_RATE = release.SAMPLE_RATE
SUBSETS = ('v1s', 'v1m', 'v2')
SPLITS = release.SPLITS
REAL_FRAMES = {'v1s': 5, 'v1m': 5, 'v2': 10}  # spec §1.1
METADATA_COLUMNS = ('vid', 'uid', 's_min', 's_sec', 'a_obj', 'split', 'label')
RELEASE_SUBDIR = 'avsbench_semantic'  # accepted inside a shared TFDS manual directory

_INSTRUCTIONS = """\
Download AVSBench-semantic (AVSS) from http://www.avlbench.opennlplab.cn/download and extract it
so that the manual directory (--manual_dir, default DATA_DIR/downloads/manual) holds
metadata.csv, label2idx.json and the v1s/, v1m/, v2/ folders (or holds them in a subfolder
avsbench_semantic/).
"""


@dataclasses.dataclass(eq=False)
class AvsbenchSemanticConfig(tfds.core.BuilderConfig):
    """A stored variant of AVSBench-semantic.

    image_size: frames and labels are stored at image_size x image_size (spec §2.4 geometry).
    subsets: the subsets (metadata ``label`` column) to include.
    """

    image_size: int = 224
    subsets: tuple[str, ...] = SUBSETS

    def __post_init__(self):
        self.subsets = tuple(self.subsets)  # lists from JSON overrides
        unknown = sorted(set(self.subsets) - set(SUBSETS))
        if unknown or not self.subsets:
            raise ValueError(f'AvsbenchSemanticConfig {self.name!r}: subsets={self.subsets!r} must '
                             f'be a non-empty subset of {SUBSETS}.')
        if self.image_size < 32:
            raise ValueError(f'AvsbenchSemanticConfig {self.name!r}: image_size={self.image_size} '
                             'must be >= 32 (the ResNet stride).')


@dataclasses.dataclass(frozen=True)
class _Video:
    """One metadata.csv row, resolved to its folder."""

    uid: str
    subset: str
    split: str
    folder: str


class AvsbenchSemantic(tfds.core.GeneratorBasedBuilder):
    """AVSBench-semantic videos from the official release (see the module docstring)."""

    name = 'avsbench_semantic'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First release.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    BUILDER_CONFIGS = [
        AvsbenchSemanticConfig(name='default', description='v1s + v1m + v2 at 224x224 '
                               '(the CMR paper setting).'),
        AvsbenchSemanticConfig(name='res64', image_size=64,
                               description='v1s + v1m + v2 at 64x64 (CPU experiments).'),
    ]
    DEFAULT_CONFIG_NAME = 'default'

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # As in synth_avs.py: the default resolves through importlib_resources, which needs an
        # installed package; this file's own path is what it would return.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        zlib = tfds.features.Encoding.ZLIB
        return tfds.core.DatasetInfo(
            builder=self,
            description='AVSBench-semantic: audio-visual semantic segmentation, 70 classes.',
            features=tfds.features.FeaturesDict({
                'uid': tfds.features.Text(),
                'subset': tfds.features.Text(),
                'frames': tfds.features.Tensor(shape=(NUM_FRAMES, s, s, 3), dtype=np.uint8,
                                               encoding=zlib),
                'labels': tfds.features.Tensor(shape=(NUM_FRAMES, s, s), dtype=np.uint8,
                                               encoding=zlib),
                'audio': tfds.features.Tensor(shape=(NUM_FRAMES * SAMPLE_RATE,), dtype=np.int16,
                                              encoding=zlib),
                'frame_mask': tfds.features.Tensor(shape=(NUM_FRAMES,), dtype=np.bool_),
                'label_mask': tfds.features.Tensor(shape=(NUM_FRAMES,), dtype=np.bool_),
                'classes': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            }),
            metadata=tfds.core.MetadataDict(),
            homepage='http://www.avlbench.opennlplab.cn',
        )

    def _split_generators(self, dl_manager):
        root = release.manual_release_root(dl_manager, 'metadata.csv', RELEASE_SUBDIR, self.name)
        class_names = read_label2idx(os.path.join(root, 'label2idx.json'))
        videos = read_metadata(os.path.join(root, 'metadata.csv'), self.builder_config.subsets)
        self.info.metadata.update({'class_names': class_names, 'num_frames': NUM_FRAMES,
                                   'image_size': self.builder_config.image_size,
                                   'subsets': list(self.builder_config.subsets)})
        palette = release.voc_palette(len(class_names))
        return {split: self._generate_examples(selected, palette)
                for split, selected in release.videos_by_split(videos, root).items()}

    def _generate_examples(self, videos: list[_Video], palette: np.ndarray) -> Iterator:
        for video in videos:
            yield f'{video.subset}/{video.uid}', read_video(video, palette,
                                                            self.builder_config.image_size)


def read_label2idx(path: str) -> list[str]:
    """label2idx.json (1-based, background = 1) -> class names by 0-based training index."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: label2idx.json is missing from the release.')
    with open(path, encoding='utf-8') as f:
        mapping = json.load(f)
    if (not isinstance(mapping, dict) or mapping.get('background') != 1
            or sorted(mapping.values()) != list(range(1, len(mapping) + 1))):
        raise ValueError(f'{path}: expected a JSON object mapping class names to the 1-based '
                         f'indices 1..K with "background": 1 (AVSBench convention).')
    names = [''] * len(mapping)
    for name, index in mapping.items():
        names[index - 1] = name
    return names


def read_metadata(path: str, subsets: Sequence[str]) -> list[_Video]:
    """metadata.csv -> the videos of ``subsets``; every row must name an existing folder."""
    root = os.path.dirname(path)
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        missing = sorted({'uid', 'split', 'label'} - set(reader.fieldnames or ()))
        if missing:
            raise ValueError(f'{path}: header {reader.fieldnames} lacks the column(s) {missing}; '
                             f'AVSBench-semantic\'s header is {",".join(METADATA_COLUMNS)}.')
        videos, seen = [], set()
        for line, row in enumerate(reader, start=2):
            subset, split, uid = row['label'], row['split'], row['uid']
            if subset not in SUBSETS or split not in SPLITS or not uid:
                raise ValueError(f'{path}, line {line}: label={subset!r}, split={split!r}, '
                                 f'uid={uid!r}; expected label in {SUBSETS}, split in {SPLITS} '
                                 'and a non-empty uid.')
            if (subset, uid) in seen:
                raise ValueError(f'{path}, line {line}: video {subset}/{uid} is listed twice.')
            seen.add((subset, uid))
            if subset not in subsets:
                continue
            folder = os.path.join(root, subset, uid)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f'{path}, line {line}: the folder {folder} of video '
                                        f'{uid} (subset {subset}) does not exist.')
            videos.append(_Video(uid, subset, split, folder))
    return videos


def read_video(video: _Video, palette: np.ndarray, image_size: int) -> dict:
    """Decodes, checks, resizes and pads one video folder into a feature dict."""
    real = REAL_FRAMES[video.subset]
    annotated = 1 if (video.subset == 'v1s' and video.split == 'train') else real
    frame_paths = release.numbered_files(os.path.join(video.folder, 'frames'), '.jpg', 0, real)
    label_paths = release.numbered_files(os.path.join(video.folder, 'labels_rgb'), '.png', 0,
                                         annotated)
    frames = [release.read_image(p) for p in frame_paths]
    frames = release.stack_same_size(frame_paths, frames, frames[0].shape[:2])
    labels = [release.colours_to_labels(release.read_image(p), palette, p) for p in label_paths]
    labels = release.stack_same_size(label_paths, labels, frames.shape[1:3])
    frames, labels = release.resize_to_stored(frames, labels, image_size, video.split)
    t = np.arange(NUM_FRAMES)
    label_mask = t < annotated
    labels = release.pad_frames(labels, NUM_FRAMES)
    return {
        'uid': video.uid,
        'subset': video.subset,
        'frames': release.pad_frames(frames, NUM_FRAMES),
        'labels': labels,
        'audio': release.read_audio(os.path.join(video.folder, 'audio.wav'),
                                    NUM_FRAMES * SAMPLE_RATE, real),
        'frame_mask': t < real,
        'label_mask': label_mask,
        'classes': release.present_classes(labels, label_mask),
    }


if __name__ == '__main__':
    release.build_from_command_line(AvsbenchSemantic,
                                    'Build avsbench_semantic from the official release.')
