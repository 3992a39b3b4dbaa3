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

import argparse
import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jax_cavs.data import audio as audio_lib
from jax_cavs.data import transforms

NUM_FRAMES = 10
SAMPLE_RATE = audio_lib.SAMPLE_RATE
SUBSETS = ('v1s', 'v1m', 'v2')
SPLITS = ('train', 'val', 'test')
REAL_FRAMES = {'v1s': 5, 'v1m': 5, 'v2': 10}  # spec §1.1
METADATA_COLUMNS = ('vid', 'uid', 's_min', 's_sec', 'a_obj', 'split', 'label')
RELEASE_SUBDIR = 'avsbench_semantic'  # accepted inside a shared TFDS manual directory

_INSTRUCTIONS = """\
Download AVSBench-semantic (AVSS) from http://www.avlbench.opennlplab.cn/download and extract it
so that the manual directory (--manual_dir, default DATA_DIR/downloads/manual) holds
metadata.csv, label2idx.json and the v1s/, v1m/, v2/ folders (or holds them in a subfolder
avsbench_semantic/).
"""


# ------------------------------------------------------------------------------------------------
# Reading the release (shared with avsbench_object and the tests).


def voc_palette(num_colours: int) -> np.ndarray:
    """The PASCAL-VOC bit-interleaved colormap AVSBench uses for its colour masks (spec §2.3).

    Colour j: for i = 0, 1, ... while the remaining bits of j are non-zero, bit 3i of j sets bit
    7 - i of R, bit 3i + 1 of G, bit 3i + 2 of B. Colours 0..3 are (0,0,0), (128,0,0), (0,128,0),
    (128,128,0).

    Returns:
        uint8 [num_colours, 3].
    """
    palette = np.zeros((num_colours, 3), np.uint8)
    for j in range(num_colours):
        label, i = j, 0
        while label:
            for channel in range(3):
                palette[j, channel] |= ((label >> channel) & 1) << (7 - i)
            label >>= 3
            i += 1
    return palette


def colours_to_labels(rgb: np.ndarray, palette: np.ndarray, path: str) -> np.ndarray:
    """Maps a colour mask to palette indices, refusing colours outside the palette.

    Args:
        rgb: uint8 [H, W, 3] colour mask.
        palette: uint8 [K, 3] (``voc_palette``).
        path: the mask's file, for the error message.

    Returns:
        uint8 [H, W], pixel = index of its colour in ``palette``.

    Raises:
        ValueError: naming ``path``, the unknown colours, their pixel counts and a location.
    """
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_codes = ((palette[:, 0].astype(np.int32) << 16) | (palette[:, 1].astype(np.int32) << 8)
                     | palette[:, 2])
    order = np.argsort(palette_codes)
    position = np.clip(np.searchsorted(palette_codes[order], codes), 0, len(order) - 1)
    known = palette_codes[order][position] == codes
    if not known.all():
        bad, counts = np.unique(codes[~known], return_counts=True)
        y, x = map(int, np.argwhere(~known)[0])
        listed = ', '.join(f'({c >> 16}, {(c >> 8) & 255}, {c & 255}) x{n}'
                           for c, n in list(zip(bad, counts))[:5])
        raise ValueError(
            f'{path}: {int((~known).sum())} pixels have colours outside the {len(palette)}-colour '
            f'AVSBench palette, e.g. {listed} (first at row {y}, column {x}). Masks must be '
            f'lossless PNGs painted with the palette colours of label2idx.json\'s classes.')
    return order[position].astype(np.uint8)


def read_image(path: str, mode: str = 'RGB') -> np.ndarray:
    """Decodes an image file to uint8 [H, W, 3] ('RGB') or [H, W] ('L'); errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: image file is missing.')
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f'{path}: cannot decode the image ({err}).') from err


# One VGGish example (96 frames of 10 ms hop + a 25 ms window) per video frame.
MIN_SAMPLES_PER_FRAME = 96 * 160


def read_audio(path: str, num_samples: int, real_frames: int) -> np.ndarray:
    """Reads a wav as 16 kHz mono int16, zero-padded or cut to ``num_samples`` [num_samples].

    int16 PCM / 32768, channel mean, resampling (``jax_cavs.data.audio.load_waveform``), then
    back to int16 (exact for a 16 kHz mono int16 file). A file too short to give every one of
    the ``real_frames`` frames its 0.96 s VGGish example (a truncated copy) is an error.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: audio file is missing.')
    waveform = audio_lib.load_waveform(path)
    needed = real_frames * MIN_SAMPLES_PER_FRAME + 400 - 160
    if waveform.shape[0] < needed:
        raise ValueError(f'{path}: audio is {waveform.shape[0] / SAMPLE_RATE:.2f} s but its '
                         f'{real_frames} frames need at least {needed / SAMPLE_RATE:.2f} s; the '
                         f'file looks truncated: copy it again from the release.')
    waveform = waveform[:num_samples]
    samples = np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)
    return np.pad(samples, (0, num_samples - samples.shape[0]))


def numbered_files(directory: str, extension: str, first: int, count: int) -> list[str]:
    """Paths ``directory/{first..first+count-1}{extension}``; error unless exactly those exist."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'{directory}: folder is missing.')
    present = sorted(n for n in os.listdir(directory) if n.endswith(extension))
    expected = [f'{i}{extension}' for i in range(first, first + count)]
    if present != sorted(expected):
        raise ValueError(f'{directory}: expected exactly {count} {extension} files '
                         f'({expected[0]}..{expected[-1]}), found {len(present)}: '
                         f'{present[:12]}{" ..." if len(present) > 12 else ""}.')
    return [os.path.join(directory, name) for name in expected]


def manual_release_root(dl_manager, marker: str, subdir: str, dataset: str) -> str:
    """The folder holding ``marker``: the manual directory itself or its ``subdir``."""
    try:
        manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as err:  # TFDS: manual directory missing or empty
        raise FileNotFoundError(f'{dataset}: the release was not found ({err}).') from None
    for root in (manual_dir, os.path.join(manual_dir, subdir)):
        if os.path.isfile(os.path.join(root, marker)):
            return root
    raise FileNotFoundError(
        f'{dataset}: neither {os.path.join(manual_dir, marker)} nor '
        f'{os.path.join(manual_dir, subdir, marker)} exists; point --manual_dir (or '
        f'DATA_DIR/downloads/manual) at the extracted release.')


def stack_same_size(paths: Sequence[str], images: Sequence[np.ndarray],
                    size: tuple[int, ...]) -> np.ndarray:
    """Stacks images [H, W(, 3)] that must all be ``size`` = (H, W); errors name the odd file."""
    for path, image in zip(paths, images):
        if image.shape[:2] != tuple(size):
            raise ValueError(f'{path}: image is {image.shape[0]}x{image.shape[1]} but the '
                             f'video\'s first frame is {size[0]}x{size[1]}.')
    return np.stack(images)


def resize_to_stored(frames: np.ndarray, labels: np.ndarray, size: int, split: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """AVSBench geometry (spec §2.4): train = short-edge resize + centre crop, else resize."""
    if split == 'train':
        return transforms.train_resize_crop(frames, labels, size)
    return transforms.eval_resize(frames, labels, size)


def pad_frames(array: np.ndarray, num_frames: int) -> np.ndarray:
    """Zero-pads [n, ...] to [num_frames, ...]."""
    return np.concatenate([array, np.zeros((num_frames - len(array),) + array.shape[1:],
                                           array.dtype)])


def present_classes(labels: np.ndarray, label_mask: np.ndarray) -> np.ndarray:
    """int32 [n]: sorted non-background labels of the annotated frames."""
    values = np.unique(labels[label_mask])
    return values[values != 0].astype(np.int32)


def videos_by_split(videos: Sequence, root: str) -> dict[str, list]:
    """Groups videos (anything with a ``split``) by split, leaving out empty splits (a release
    without val videos builds train and test only); no video at all is an error."""
    if not videos:
        raise ValueError(f'{root}: the metadata lists no video of the selected subsets.')
    grouped = {split: [v for v in videos if v.split == split] for split in SPLITS}
    return {split: selected for split, selected in grouped.items() if selected}


def build_from_command_line(builder_cls, description: str,
                            argv: Sequence[str] | None = None) -> None:
    """``python -m data_pipelines.<module> --manual_dir M --data_dir D [--config C]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--manual_dir', required=True, help='the extracted official release')
    parser.add_argument('--data_dir', required=True, help='TFDS data directory to write to')
    parser.add_argument('--config', default=None,
                        help=f'builder config, one of {sorted(builder_cls.builder_configs)}')
    args = parser.parse_args(argv)
    builder = builder_cls(config=args.config, data_dir=os.path.expanduser(args.data_dir),
                          file_format='array_record')
    builder.download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.expanduser(args.manual_dir)))
    print(f'Built {builder.info.full_name} into {builder.data_path}')


# ------------------------------------------------------------------------------------------------
# The builder.


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
        root = manual_release_root(dl_manager, 'metadata.csv', RELEASE_SUBDIR, self.name)
        class_names = read_label2idx(os.path.join(root, 'label2idx.json'))
        videos = read_metadata(os.path.join(root, 'metadata.csv'), self.builder_config.subsets)
        self.info.metadata.update({'class_names': class_names, 'num_frames': NUM_FRAMES,
                                   'image_size': self.builder_config.image_size,
                                   'subsets': list(self.builder_config.subsets)})
        palette = voc_palette(len(class_names))
        return {split: self._generate_examples(selected, palette)
                for split, selected in videos_by_split(videos, root).items()}

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
    frame_paths = numbered_files(os.path.join(video.folder, 'frames'), '.jpg', 0, real)
    label_paths = numbered_files(os.path.join(video.folder, 'labels_rgb'), '.png', 0, annotated)
    frames = [read_image(p) for p in frame_paths]
    frames = stack_same_size(frame_paths, frames, frames[0].shape[:2])
    labels = [colours_to_labels(read_image(p), palette, p) for p in label_paths]
    labels = stack_same_size(label_paths, labels, frames.shape[1:3])
    frames, labels = resize_to_stored(frames, labels, image_size, video.split)
    t = np.arange(NUM_FRAMES)
    label_mask = t < annotated
    labels = pad_frames(labels, NUM_FRAMES)
    return {
        'uid': video.uid,
        'subset': video.subset,
        'frames': pad_frames(frames, NUM_FRAMES),
        'labels': labels,
        'audio': read_audio(os.path.join(video.folder, 'audio.wav'), NUM_FRAMES * SAMPLE_RATE,
                            real),
        'frame_mask': t < real,
        'label_mask': label_mask,
        'classes': present_classes(labels, label_mask),
    }


if __name__ == '__main__':
    build_from_command_line(AvsbenchSemantic, 'Build avsbench_semantic from the official release.')
