"""What the two AVSBench builders share: reading the official releases and building from them.

``avsbench_semantic`` (AVSBench-semantic) and ``avsbench_object`` (S4 / MS3) read their releases
with the same helpers: the PASCAL-VOC palette of the colour masks and its strict inverse, image
and audio decoding whose errors name the file, numbered frame folders, locating the release in
the TFDS manual directory; they convert videos alike (AVSBench geometry, padding to T frames,
the class set of the annotated frames), group them by split and share one build command line.
They live here, apart from either builder, so that neither builder imports the other; the tests
and ``avsbench_layout`` (which writes releases of known content) use them too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jax_cavs.data import audio as audio_lib
from jax_cavs.data import transforms

SAMPLE_RATE = audio_lib.SAMPLE_RATE
SPLITS = ('train', 'val', 'test')  # of both datasets


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
