"""Tests of jax_cavs.data.transforms with hand-computed values (spec_cavs.md §2.4).

PIL bilinear places output pixel i at input coordinate (i + 0.5) * scale - 0.5 and weights
input pixels with a triangle of half-width max(scale, 1) (antialiasing when shrinking),
renormalised over the pixels inside the image. PIL nearest takes input pixel
floor((i + 0.5) * scale).
"""

import chex
import numpy as np
import pytest

from jax_cavs.data import transforms


def _gray(rows) -> np.ndarray:
    """A uint8 [H, W, 3] image with the same value in the 3 channels."""
    return np.repeat(np.asarray(rows, np.uint8)[..., None], 3, axis=-1)


def test_bilinear_upsampling_by_two():
    # Output centres at input x = -0.25, 0.25, 0.75, 1.25 -> 0 (edge), 0.75*0 + 0.25*100,
    # 0.25*0 + 0.75*100, 100 (edge).
    out = transforms.resize_frames(_gray([[0, 100]]), 1, 4)
    np.testing.assert_array_equal(out[..., 0], [[0, 25, 75, 100]])


def test_bilinear_downsampling_by_two_is_antialiased():
    # Output 0 at input x = 1.0, triangle half-width 2: pixels 0, 1, 2 (centres 0.5, 1.5, 2.5)
    # weigh 0.75, 0.75, 0.25 -> (0*.75 + 100*.75 + 200*.25) / 1.75 = 71.4 -> 71.
    # Output 1 at x = 3.0: pixels 1, 2, 3 weigh 0.25, 0.75, 0.75 -> (25 + 150 + 37.5) / 1.75
    # = 121.4 -> 121.
    out = transforms.resize_frames(_gray([[0, 100, 200, 50]]), 1, 2)
    np.testing.assert_array_equal(out[..., 0], [[71, 121]])


def test_nearest_labels_keep_values_and_leading_dims():
    labels = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 255]]], np.uint8)  # [T=2, 2, 2]
    out = transforms.resize_labels(labels, 4, 4)
    want = np.repeat(np.repeat(labels, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(out, want)
    # Shrinking 6 -> 3 rows takes rows floor((i + 0.5) * 2) = 1, 3, 5.
    rows = np.arange(6, dtype=np.uint8)[:, None].repeat(2, axis=1)
    np.testing.assert_array_equal(transforms.resize_labels(rows, 3, 2)[:, 0], [1, 3, 5])


def test_short_edge_size_follows_torchvision_resize():
    assert transforms.short_edge_size(480, 640, 224) == (224, 298)  # int(224 * 640 / 480)
    assert transforms.short_edge_size(640, 480, 224) == (298, 224)
    assert transforms.short_edge_size(224, 224, 224) == (224, 224)


def test_center_crop_offsets_round_half_to_even():
    image = np.arange(7 * 8, dtype=np.uint8).reshape(7, 8)
    # top = round((7 - 4) / 2) = round(1.5) = 2, left = round((8 - 4) / 2) = 2.
    np.testing.assert_array_equal(transforms.center_crop(image, 4, channels=False),
                                  image[2:6, 2:6])
    with pytest.raises(ValueError, match='at least 9x9'):
        transforms.center_crop(image, 9, channels=False)


def test_train_resize_crop_values():
    # Rows of value 10 * r, 6 x 4 -> short edge 4 -> 2 gives 3 x 2, then crop 2 x 2 at
    # top = round(0.5) = 0. Rows: centre 1.0 -> (0*.75 + 10*.75 + 20*.25) / 1.75 = 7.1 -> 7;
    # centre 3.0 -> (10*.25 + 20*.75 + 30*.75 + 40*.25) / 2 = 25.
    frames = _gray(np.repeat(np.arange(0, 60, 10)[:, None], 4, axis=1))[None]  # [1, 6, 4, 3]
    labels = np.repeat(np.arange(6, dtype=np.uint8)[:, None], 4, axis=1)[None]
    out_frames, out_labels = transforms.train_resize_crop(frames, labels, 2)
    np.testing.assert_array_equal(out_frames[0, :, :, 0], [[7, 7], [25, 25]])
    np.testing.assert_array_equal(out_labels[0], [[1, 1], [3, 3]])


def test_eval_resize_is_a_direct_resize():
    frames = np.full((2, 30, 40, 3), 77, np.uint8)
    labels = np.zeros((2, 30, 40), np.uint8)
    labels[:, :, 20:] = 3
    out_frames, out_labels = transforms.eval_resize(frames, labels, 8)
    np.testing.assert_array_equal(out_frames, 77)
    np.testing.assert_array_equal(out_labels[:, :, :4], 0)
    np.testing.assert_array_equal(out_labels[:, :, 4:], 3)


def test_normalize_imagenet():
    frames = _gray([[255, 0]])
    out = transforms.normalize_imagenet(frames)
    assert out.dtype == np.float32 and out.shape == (1, 2, 3)
    want = np.array([[[(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225],
                      [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]]], np.float32)
    # One float32 subtraction and division of O(1) values: a few ulps.
    chex.assert_trees_all_close(out, want, rtol=1e-6, atol=1e-6)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match='frames must be uint8'):
        transforms.resize_frames(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ValueError, match='frames must be uint8'):
        transforms.normalize_imagenet(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match='labels must be uint8'):
        transforms.resize_labels(np.zeros((4, 4), np.int32), 2, 2)
