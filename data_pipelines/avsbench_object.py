"""TFDS builder of AVSBench-object: S4 (single source) and MS3 (multi source) (spec_family C3).

Build (array_record, from the TFDS manual directory; nothing is downloaded):

    # without TensorFlow (this project's environment):
    python -m data_pipelines.avsbench_object --manual_dir /data/avsbench_data \\
        --data_dir ~/tensorflow_datasets --config s4      # and again with --config ms3
    # with TensorFlow installed:
    tfds build avsbench_object --imports data_pipelines.avsbench_object \\
        --manual_dir /data/avsbench_data --data_dir ~/tensorflow_datasets \\
        --file_format array_record --config s4

``jax_cavs.data.sources.load_dataset('avsbench_object', 's4', DATA_DIR)`` builds from
``DATA_DIR/downloads/manual`` (the release directly there or in a subfolder ``avsbench_object/``).

Assumed release layout: the paths of the official loaders, OpenNLPLab/AVSBench
``avs_scripts/avs_s4/{config,dataloader}.py`` and ``avs_scripts/avs_ms3/{config,dataloader}.py``
(``cfg.DATA.*`` paths relative to ``avsbench_data/``), plus the raw ``audio_wav`` folders that
the release ships beside the precomputed ``audio_log_mel`` pickles (used by AVSBench's
preprocessing and by third-party loaders with the same paths; we read the wav, not the
pickles, so the log-mel is computed by ``jax_cavs.data.audio`` like every other dataset):

    Single-source/s4_meta_data.csv       column 0 = video name, column 2 = category,
                                         column 'split' (train/val/test); other columns unused
    Single-source/s4_data/visual_frames/{split}/{category}/{name}/{name}_{1..5}.png
    Single-source/s4_data/gt_masks/{split}/{category}/{name}/{name}_{1..m}.png
                                         m = 1 in train (first frame only), 5 in val/test
    Single-source/s4_data/audio_wav/{split}/{category}/{name}.wav
    Multi-sources/ms3_meta_data.csv      column 0 = video name, column 'split'
    Multi-sources/ms3_data/visual_frames/{name}/{name}.mp4_{1..5}.png
    Multi-sources/ms3_data/gt_masks/{split}/{name}/{name}_{1..5}.png
    Multi-sources/ms3_data/audio_wav/{split}/{name}.wav

Masks are binary (sounding pixels): a grey/RGB mask must hold only 0 and 255, a palette ('P')
mask only indices 0 and 1; anything else is an error naming the file. Frames are resized
directly to ``image_size`` (bilinear; masks nearest) in every split, as the release's frames
are already 224x224 and the official loaders do not crop.

Features of a video (T = 5 frames, S = image_size):
    uid (video name), subset ('s4' | 'ms3'), category (S4 class name; '' for MS3): Text.
    frames uint8 [5, S, S, 3]; labels uint8 [5, S, S]: S4 = the category's index 1..23 on the
    sounding pixels (so class-incremental splits work; binary = labels > 0), MS3 = 1 on the
    sounding pixels; audio int16 [80000] (16 kHz mono, 5 s); zlib-compressed.
    frame_mask bool [5] (all True), label_mask bool [5] (S4 train: frame 0 only);
    classes int32 [n] (sorted classes of the annotated frames).
Splits train, val, test. Metadata: class_names ('background' + the S4 categories sorted, i.e.
the 23 AVSBench classes in alphabetical order; MS3: 'background', 'sounding'), num_frames (5),
image_size, protocol.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data_pipelines import avsbench_release as release
from jax_cavs.data import transforms

NUM_FRAMES = 5
SPLITS = release.SPLITS

_INSTRUCTIONS = """\
Download AVSBench-object (Single-source S4 and Multi-sources MS3) from
http://www.avlbench.opennlplab.cn/download and extract it so that the manual directory
(--manual_dir, default DATA_DIR/downloads/manual) holds Single-source/ and Multi-sources/ (or
holds them in a subfolder avsbench_object/).
"""


@dataclasses.dataclass(frozen=True)
class ObjectLayout:
    """Where one protocol keeps its files (module docstring), relative to the release root."""

    protocol: str
    csv: str
    data: str
    header: tuple[str, ...]  # what the writer emits; the builder reads columns by position
    synth_subset: str  # the SynthAVS subset that plays this protocol in tests

    def num_masks(self, split: str) -> int:
        """Annotated frames per video: S4 train has the first frame only."""
        return 1 if (self.protocol == 's4' and split == 'train') else NUM_FRAMES


LAYOUTS = {
    's4': ObjectLayout('s4', 'Single-source/s4_meta_data.csv', 'Single-source/s4_data',
                       ('name', 'vid', 'category', 'split'), 'v1s'),
    'ms3': ObjectLayout('ms3', 'Multi-sources/ms3_meta_data.csv', 'Multi-sources/ms3_data',
                        ('name', 'split'), 'v1m'),
}


@dataclasses.dataclass(frozen=True)
class ClipPaths:
    frames: list[str]
    masks: list[str]
    audio: str


def clip_paths(root: str, protocol: str, name: str, category: str | None, split: str,
               num_masks: int) -> ClipPaths:
    """The files of one video (module docstring)."""
    data = os.path.join(root, LAYOUTS[protocol].data)
    if protocol == 's4':
        frame_dir = os.path.join(data, 'visual_frames', split, category, name)
        frames = [os.path.join(frame_dir, f'{name}_{i}.png') for i in range(1, NUM_FRAMES + 1)]
        mask_dir = os.path.join(data, 'gt_masks', split, category, name)
        audio = os.path.join(data, 'audio_wav', split, category, f'{name}.wav')
    else:
        frame_dir = os.path.join(data, 'visual_frames', name)
        frames = [os.path.join(frame_dir, f'{name}.mp4_{i}.png') for i in range(1, NUM_FRAMES + 1)]
        mask_dir = os.path.join(data, 'gt_masks', split, name)
        audio = os.path.join(data, 'audio_wav', split, f'{name}.wav')
    masks = [os.path.join(mask_dir, f'{name}_{i}.png') for i in range(1, num_masks + 1)]
    return ClipPaths(frames, masks, audio)


def metadata_row(protocol: str, name: str, category: str | None, split: str) -> list[str]:
    """A metadata row with the video name in column 0 and the category in column 2 (S4)."""
    return [name, name, category, split] if protocol == 's4' else [name, split]


def read_binary_mask(path: str) -> np.ndarray:
    """A binary mask PNG -> bool [H, W]; only 0/255 (grey, RGB) or 0/1 (palette) allowed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: mask file is missing.')
    try:
        with Image.open(path) as image:
            palette_mode = image.mode == 'P'
            values = np.asarray(image if palette_mode else image.convert('L'))
    except (OSError, ValueError) as err:
        raise ValueError(f'{path}: cannot decode the mask ({err}).') from err
    on = 1 if palette_mode else 255
    unexpected = np.setdiff1d(np.unique(values), (0, on))
    if unexpected.size:
        raise ValueError(f'{path}: a binary mask holds only 0 and {on}'
                         f'{" (palette indices)" if palette_mode else ""}; found values '
                         f'{unexpected[:8].tolist()}.')
    return values == on


@dataclasses.dataclass(eq=False)
class AvsbenchObjectConfig(tfds.core.BuilderConfig):
    """protocol: 's4' or 'ms3'; image_size: stored frames are image_size x image_size."""

    protocol: str = 's4'
    image_size: int = 224

    def __post_init__(self):
        if self.protocol not in LAYOUTS:
            raise ValueError(f'AvsbenchObjectConfig {self.name!r}: protocol={self.protocol!r} '
                             f'must be one of {sorted(LAYOUTS)}.')
        if self.image_size < 32:
            raise ValueError(f'AvsbenchObjectConfig {self.name!r}: image_size={self.image_size} '
                             'must be >= 32.')


@dataclasses.dataclass(frozen=True)
class _Video:
    name: str
    category: str | None
    split: str


class AvsbenchObject(tfds.core.GeneratorBasedBuilder):
    """AVSBench-object S4 / MS3 videos from the official release (module docstring)."""

    name = 'avsbench_object'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First release.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    BUILDER_CONFIGS = [
        AvsbenchObjectConfig(name='s4', protocol='s4',
                             description='S4: single source, 23 classes, 224x224.'),
        AvsbenchObjectConfig(name='ms3', protocol='ms3',
                             description='MS3: multiple sources, class-agnostic, 224x224.'),
    ]
    DEFAULT_CONFIG_NAME = 's4'

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)  # see avsbench_semantic.AvsbenchSemantic.code_path

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        zlib = tfds.features.Encoding.ZLIB
        return tfds.core.DatasetInfo(
            builder=self,
            description='AVSBench-object: audio-visual segmentation of sounding objects '
                        '(S4 single source, MS3 multiple sources).',
            features=tfds.features.FeaturesDict({
                'uid': tfds.features.Text(),
                'subset': tfds.features.Text(),
                'category': tfds.features.Text(),
                'frames': tfds.features.Tensor(shape=(NUM_FRAMES, s, s, 3), dtype=np.uint8,
                                               encoding=zlib),
                'labels': tfds.features.Tensor(shape=(NUM_FRAMES, s, s), dtype=np.uint8,
                                               encoding=zlib),
                'audio': tfds.features.Tensor(shape=(NUM_FRAMES * release.SAMPLE_RATE,),
                                              dtype=np.int16, encoding=zlib),
                'frame_mask': tfds.features.Tensor(shape=(NUM_FRAMES,), dtype=np.bool_),
                'label_mask': tfds.features.Tensor(shape=(NUM_FRAMES,), dtype=np.bool_),
                'classes': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            }),
            metadata=tfds.core.MetadataDict(),
            homepage='http://www.avlbench.opennlplab.cn',
        )

    def _split_generators(self, dl_manager):
        protocol = self.builder_config.protocol
        layout = LAYOUTS[protocol]
        root = release.manual_release_root(dl_manager, layout.csv, 'avsbench_object', self.name)
        videos = _read_metadata(os.path.join(root, layout.csv), protocol)
        categories = sorted({v.category for v in videos}) if protocol == 's4' else ['sounding']
        class_names = ['background'] + categories
        self.info.metadata.update({'class_names': class_names, 'num_frames': NUM_FRAMES,
                                   'image_size': self.builder_config.image_size,
                                   'protocol': protocol})
        class_index = {name: i for i, name in enumerate(class_names)}
        return {split: self._generate_examples(root, selected, class_index)
                for split, selected in release.videos_by_split(videos, root).items()}

    def _generate_examples(self, root: str, videos: list[_Video],
                           class_index: dict[str, int]) -> Iterator:
        cfg = self.builder_config
        layout = LAYOUTS[cfg.protocol]
        for video in videos:
            paths = clip_paths(root, cfg.protocol, video.name, video.category, video.split,
                               layout.num_masks(video.split))
            frames = [release.read_image(p) for p in paths.frames]
            frames = release.stack_same_size(paths.frames, frames, frames[0].shape[:2])
            masks = release.stack_same_size(paths.masks, [read_binary_mask(p) for p in paths.masks],
                                            frames.shape[1:3])
            label = class_index[video.category if cfg.protocol == 's4' else 'sounding']
            labels = (masks * label).astype(np.uint8)
            frames, labels = transforms.eval_resize(frames, labels, cfg.image_size)
            label_mask = np.arange(NUM_FRAMES) < len(paths.masks)
            labels = release.pad_frames(labels, NUM_FRAMES)
            yield video.name, {
                'uid': video.name,
                'subset': cfg.protocol,
                'category': video.category or '',
                'frames': frames,
                'labels': labels,
                'audio': release.read_audio(paths.audio, NUM_FRAMES * release.SAMPLE_RATE,
                                            NUM_FRAMES),
                'frame_mask': np.ones(NUM_FRAMES, bool),
                'label_mask': label_mask,
                'classes': release.present_classes(labels, label_mask),
            }


def _read_metadata(path: str, protocol: str) -> list[_Video]:
    """The metadata rows, as the official loaders read them (module docstring)."""
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.reader(f))
    if not rows or 'split' not in rows[0]:
        raise ValueError(f'{path}: the header must contain a "split" column (got '
                         f'{rows[0] if rows else "an empty file"}).')
    split_column = rows[0].index('split')
    min_columns = max(split_column + 1, 3 if protocol == 's4' else 1)
    videos, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < min_columns or not row[0] or row[split_column] not in SPLITS:
            raise ValueError(f'{path}, line {line}: {row}; expected the video name in column 0, '
                             f'{"the category in column 2, " if protocol == "s4" else ""}'
                             f'and a split in {SPLITS}.')
        name, split = row[0], row[split_column]
        category = row[2] if protocol == 's4' else None
        if name in seen:
            raise ValueError(f'{path}, line {line}: video {name} is listed twice.')
        seen.add(name)
        videos.append(_Video(name, category, split))
    return videos


if __name__ == '__main__':
    release.build_from_command_line(AvsbenchObject,
                                    'Build avsbench_object (S4 / MS3) from the official release.')
