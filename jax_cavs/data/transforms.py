"""Frame and label-mask transforms of AVSBench-semantic (spec_cavs.md §2.4), on numpy arrays.

AVSBench's color_dataloader uses torchvision on PIL images:
- train: `Resize(224)` (short edge to 224, the long edge to int(224 * long / short)), then
  `CenterCrop(224)` (top = int(round((H - 224) / 2)), left likewise); no random augmentation;
- val / test: `Resize((224, 224))`;
- frames use PIL bilinear (antialiased when shrinking), masks PIL nearest;
- frames then go through `ToTensor` (/255) and ImageNet `Normalize`.
The resizes here call PIL the same way, so pixel values match AVSBench's. Shapes are
channels-last: frames uint8 [..., H, W, 3], labels uint8 [..., H, W] (any leading dims, e.g. T).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _check_uint8(array: np.ndarray, name: str, channels: bool) -> None:
    rank_ok = array.ndim >= 3 and array.shape[-1] == 3 if channels else array.ndim >= 2
    if array.dtype != np.uint8 or not rank_ok:
        layout = '[..., H, W, 3]' if channels else '[..., H, W]'
        raise ValueError(f'{name} must be uint8 {layout}, got {array.dtype} {array.shape}.')


def _resize_stack(images: np.ndarray, height: int, width: int, resample: int,
                  channels: bool) -> np.ndarray:
    """PIL-resizes every [H, W(, 3)] image of a uint8 stack [..., H, W(, 3)] to (height, width)."""
    spatial = 3 if channels else 2
    lead = images.shape[:images.ndim - spatial]
    flat = images.reshape((-1,) + images.shape[images.ndim - spatial:])
    out = np.stack([np.asarray(Image.fromarray(im).resize((width, height), resample))
                    for im in flat])
    return out.reshape(lead + out.shape[1:])


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (PIL, antialiased) resize. uint8 [..., H, W, 3] -> uint8 [..., height, width, 3]."""
    _check_uint8(frames, 'frames', channels=True)
    return _resize_stack(frames, height, width, Image.BILINEAR, channels=True)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour (PIL) resize. uint8 [..., H, W] -> uint8 [..., height, width]."""
    _check_uint8(labels, 'labels', channels=False)
    return _resize_stack(labels, height, width, Image.NEAREST, channels=False)


def short_edge_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) after torchvision `Resize(short)`: short edge -> short, long edge ->
    int(short * long / short_edge)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def center_crop(array: np.ndarray, size: int, channels: bool) -> np.ndarray:
    """torchvision `CenterCrop(size)` of [..., H, W(, C)] (top = int(round((H - size) / 2)))."""
    h_axis = array.ndim - (3 if channels else 2)
    height, width = array.shape[h_axis], array.shape[h_axis + 1]
    if height < size or width < size:
        raise ValueError(f'center_crop({size}) needs at least {size}x{size}, got {height}x{width}.')
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    index = [slice(None)] * array.ndim
    index[h_axis], index[h_axis + 1] = slice(top, top + size), slice(left, left + size)
    return array[tuple(index)]


def train_resize_crop(frames: np.ndarray, labels: np.ndarray,
                    size: int) -> tuple[np.ndarray, np.ndarray]:
    """AVSBench train geometry: resize the short edge to `size`, then centre-crop size x size.

    frames uint8 [..., H, W, 3], labels uint8 [..., H, W] -> [..., size, size, (3)].
    """
    height, width = short_edge_size(frames.shape[-3], frames.shape[-2], size)
    frames = center_crop(resize_frames(frames, height, width), size, channels=True)
    labels = center_crop(resize_labels(labels, height, width), size, channels=False)
    return frames, labels


def eval_resize(frames: np.ndarray, labels: np.ndarray,
                   size: int) -> tuple[np.ndarray, np.ndarray]:
    """AVSBench val/test geometry: direct resize to size x size (bilinear / nearest)."""
    return resize_frames(frames, size, size), resize_labels(labels, size, size)


def normalize_imagenet(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 (x / 255 - mean) / std with ImageNet mean and std."""
    _check_uint8(frames, 'frames', channels=True)
    return (frames.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
