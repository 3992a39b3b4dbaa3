"""PLOP entropy pseudo-labels vs numpy transcriptions of [PLOP:train.py] (spec_cavs §5.6(a)).

Tolerances: the entropy is a float32 sum of <= 3 terms followed by two divisions, so its
relative error is ~1e-6 (rtol=1e-5, atol=1e-7 for values near 0). Histogram bins are checked
to lie >= 1e-3 away from bin edges so float32 and float64 agree on them.
"""

import functools

import chex
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jax_cavs.problems.cavs.losses import pseudo_labels

K, C_OLD, K_T = 6, 3, 5
SEEN = np.array([1, 1, 1, 1, 1, 0], bool)
OLD = np.array([1, 1, 1, 0, 0, 0], bool)


def _reference_entropy(old_logits):
    """PLOP ``entropy(softmax(outputs_old)) / log(nb_current_classes)`` on [B, H, W, K]."""
    x = old_logits[..., :C_OLD].astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    factor = 1 / np.log(C_OLD + 1e-8)
    entropy = -factor * np.mean(p * np.log(p + 1e-8), axis=-1)
    return entropy / np.log(K_T), p.argmax(-1)


def _reference_find_median(histograms, base_threshold=0.001):
    """``Trainer.find_median`` (entropy mode) transcribed loop by loop, float32 like torch."""
    nb_bins = histograms.shape[1]
    thresholds = np.zeros(histograms.shape[0], np.float32)
    for c in range(histograms.shape[0]):
        total = histograms[c].sum()
        if total <= 0:
            continue
        half = np.float32(total) / np.float32(2)
        running_sum = 0.
        for lower_border in range(nb_bins):
            lower_border = lower_border / nb_bins
            bin_index = int(lower_border * nb_bins)
            if half >= np.float32(running_sum) and half <= (
                    np.float32(running_sum) + np.float32(histograms[c, bin_index])):
                break
            running_sum += lower_border * nb_bins
        with np.errstate(divide="ignore", invalid="ignore"):
            median = np.float32(lower_border) + ((half - np.float32(running_sum))
                                                 / np.float32(histograms[c, bin_index])
                                                 ) * np.float32(1 / nb_bins)
        thresholds[c] = median
    for c in range(len(thresholds)):
        thresholds[c] = max(thresholds[c], np.float32(base_threshold))
    return thresholds


class EntropyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_normalized_entropy_matches_plop(self):
        rng = np.random.default_rng(0)
        logits = (rng.normal(size=(2, 3, 3, K)) * 3).astype(np.float32)
        logits[..., 3:] = 40.0  # channels the old model does not have
        u, pseudo = self.variant(pseudo_labels.normalized_entropy)(logits, OLD, SEEN)
        expected_u, expected_pseudo = _reference_entropy(logits)
        chex.assert_trees_all_close(u, expected_u.astype(np.float32), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(pseudo, expected_pseudo)

    @chex.variants(with_jit=True, without_jit=True)
    def test_update_histogram_counts_background_pixels_per_pseudo_class(self):
        rng = np.random.default_rng(1)
        logits = (rng.normal(size=(2, 4, 4, K)) * 2).astype(np.float32)
        labels = rng.choice([0, 0, 3, 255], size=(2, 4, 4)).astype(np.int32)
        frame_mask = np.array([1.0, 0.0], np.float32)[:, None, None]  # second frame padded
        u, pseudo = _reference_entropy(logits)
        scaled = u * 100
        self.assertTrue(np.all(np.abs(scaled - np.round(scaled)) > 1e-3))
        expected = np.zeros((K, 100), np.int32)
        for idx in np.ndindex(labels.shape):
            if labels[idx] == 0 and frame_mask[idx[0], 0, 0]:
                expected[pseudo[idx], min(int(scaled[idx]), 99)] += 1
        start = np.zeros((K, 100), np.int32)
        start[1, 7] = 5
        got = self.variant(pseudo_labels.update_histogram)(start, labels, logits, OLD, SEEN,
                                                           frame_mask)
        np.testing.assert_array_equal(got, expected + start)
        self.assertGreater(expected.sum(), 0)


class MedianThresholdsTest(absltest.TestCase):

    def _thresholds(self, rows):
        histogram = np.zeros((len(rows), 100), np.int64)
        for c, row in enumerate(rows):
            for b, count in row.items():
                histogram[c, b] = count
        return pseudo_labels.median_thresholds(histogram)

    def test_hand_computed_medians(self):
        got = self._thresholds([
            {0: 10},                  # half 5 in bin 0 -> 0 + 5/10 * 0.01
            {0: 2, 1: 3, 2: 5},       # (sic) running = 0 + 1 at b = 2 -> 0.02 + (5-1)/5 * 0.01
            {},                       # never predicted -> max(0, 0.001)
            {5: 3},                   # never breaks, last bin empty: -inf -> 0.001
            {28: 10, 70: 810},        # b = 29 reads bin int(0.29*100) = 28: 0.29 + 4/10 * 0.01
        ])
        np.testing.assert_allclose(got, [0.005, 0.028, 0.001, 0.001, 0.294], rtol=1e-6)

    def test_degenerate_histograms_give_nan_or_inf_like_plop(self):
        got = self._thresholds([
            {19: 1, 20: 1},  # half = 1 equals the running sum 0 + 1 at b = 2, bin empty: 0/0
            {29: 20000},     # bin 29 is never read: no break, (10000 - 4950) / h[99] = +inf
        ])
        self.assertTrue(np.isnan(got[0]))
        self.assertEqual(got[1], np.inf)

    def test_matches_transcribed_loop_on_random_histograms(self):
        rng = np.random.default_rng(2)
        histogram = np.zeros((6, 100), np.int64)
        histogram[0, 0] = 123456
        histogram[1, :3] = [50, 7, 1]
        histogram[2] = rng.integers(0, 30, size=100)
        histogram[3, rng.integers(0, 100, size=20)] = rng.integers(1, 1000, size=20)
        histogram[5, :2] = [3, 400]
        got = pseudo_labels.median_thresholds(histogram)
        np.testing.assert_array_equal(got, _reference_find_median(histogram))


class ApplyPseudoLabelsTest(chex.TestCase):

    @staticmethod
    def _inputs():
        def confident(c):
            row = np.zeros(K, np.float32)
            row[c] = 20.0
            row[3:] = 30.0  # channels the old model does not have
            return row

        uncertain = np.array([0, 0, 0, 30, 30, 30], np.float32)  # pseudo 0, u ~ 0.207
        labels = np.array([[[0, 3], [1, 0]],        # new-task image
                           [[0, 1], [4, 0]]], np.int32)  # memory clip
        logits = np.stack([
            np.stack([[confident(2), confident(1)], [uncertain, confident(1)]]),
            np.stack([[uncertain, confident(2)], [confident(2), confident(0)]]),
        ])
        return labels, logits, np.array([False, True])

    @chex.variants(with_jit=True, without_jit=True)
    def test_old_mode_relabels_and_memory_keeps_true_old_labels(self):
        labels, logits, is_memory = self._inputs()
        thresholds = np.full(K, 0.01, np.float32)
        fn = functools.partial(pseudo_labels.apply_pseudo_labels, bg_mask_mode="old")
        new_labels, kappa = self.variant(fn)(labels, logits, thresholds, OLD, SEEN, is_memory)
        np.testing.assert_array_equal(new_labels, [[[2, 3], [255, 1]],
                                                   [[255, 1], [4, 0]]])
        chex.assert_trees_all_close(kappa, np.array([2 / (3 + 1e-6), 1 / (2 + 1e-6)],
                                                    np.float32), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_background_mode_and_per_class_thresholds(self):
        labels, logits, is_memory = self._inputs()
        thresholds = np.full(K, 0.01, np.float32)
        thresholds[0] = 0.5  # uncertain pixels (pseudo 0, u ~ 0.207) now pass
        fn = functools.partial(pseudo_labels.apply_pseudo_labels, bg_mask_mode="background")
        new_labels, kappa = self.variant(fn)(labels, logits, thresholds, OLD, SEEN, is_memory)
        np.testing.assert_array_equal(new_labels, [[[2, 3], [1, 1]],
                                                   [[0, 1], [4, 0]]])
        chex.assert_trees_all_close(kappa, np.array([2 / (2 + 1e-6), 2 / (2 + 1e-6)],
                                                    np.float32), rtol=1e-6)

    def test_unknown_mode_is_rejected(self):
        labels, logits, is_memory = self._inputs()
        with self.assertRaisesRegex(ValueError, "bg_mask_mode"):
            pseudo_labels.apply_pseudo_labels(labels, logits, jnp.zeros(K), OLD, SEEN,
                                              is_memory, bg_mask_mode="all")


if __name__ == "__main__":
    absltest.main()
