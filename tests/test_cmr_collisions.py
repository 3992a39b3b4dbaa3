"""CMR's CSR (spec_cavs §6) on tiny hand-made masks whose values are derived in the comments:
every step (collision counts, c*, r, r̄ under the three rules, f with 0 -> 1, p, the resampling
count and draw). Tolerances: test_cmr.py's doc.
"""

import functools

import chex
import numpy as np
from absl.testing import absltest

from jax_cavs.problems.cavs import collision
from test_cmr import RTOL_F64


# -- CSR: tiny hand-made masks ----------------------------------------------------------------
# K = 6, old = {0, 1, 2}, current = {3, 4}; class 5 is neither. Two videos of two 2x3 frames.
OLD = np.array([1, 1, 1, 0, 0, 0], bool)
CURRENT = np.array([0, 0, 0, 1, 1, 0], bool)
LABELS = np.array([
    [[[3, 3, 4], [0, 255, 4]],     # v0 f0
     [[4, 4, 4], [3, 5, 0]]],      # v0 f1
    [[[3, 3, 3], [3, 3, 3]],       # v1 f0
     [[4, 4, 4], [4, 4, 4]]],      # v1 f1 (unannotated: weight 0)
], np.int32)
PRED = np.array([
    [[[1, 2, 1], [1, 1, 0]],
     [[2, 2, 4], [3, 2, 2]]],
    [[[1, 1, 1], [1, 1, 1]],
     [[2, 2, 2], [2, 2, 2]]],
], np.int32)
WEIGHTS = np.array([[1.0, 1.0], [1.0, 0.0]], np.float32)
# v0 f0: (3->1), (3->2), (4->1) collide; label 0, ignore 255 and the bg prediction do not.
# v0 f1: (4->2) twice; a new-class prediction (4->4), label 3 predicted 3, label 5 (not
#        current) predicted 2 and label 0 do not.
# v1 f0: six (3->1); v1 f1 is unannotated.
PER_FRAME = np.zeros((2, 2, 6), np.int64)
PER_FRAME[0, 0, [1, 2]] = [2, 1]
PER_FRAME[0, 1, 2] = 2
PER_FRAME[1, 0, 1] = 6
PAIRS = np.zeros((6, 6), np.int64)
PAIRS[1, 3], PAIRS[2, 3], PAIRS[1, 4], PAIRS[2, 4] = 7, 1, 1, 2

# Units for the statistics, K = 4 with old foreground classes {1, 2, 3}:
UNITS = np.array([
    [0, 3, 1, 0],   # c* 1, r 0.75
    [0, 0, 0, 0],   # no collision
    [0, 2, 2, 0],   # tie -> c* 1, r 0.5
    [0, 0, 1, 4],   # c* 3, r 0.8
    [0, 5, 0, 0],   # c* 1, r 1.0
    [0, 0, 9, 1],   # c* 2, r 0.9
    [0, 7, 0, 1],   # c* 1, r 0.875
])
UNIT_RATIOS = [0.75, 0.5, 0.8, 1.0, 0.9, 0.875]  # the colliding units
OLD_4 = np.array([1, 1, 1, 1], bool)


class CollisionCountTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_counts_and_pairs_by_hand(self):
        fn = self.variant(functools.partial(collision.collision_counts, num_classes=6))
        per_frame, pairs = fn(PRED, LABELS, OLD, CURRENT, WEIGHTS)
        np.testing.assert_array_equal(per_frame, PER_FRAME)
        np.testing.assert_array_equal(pairs, PAIRS)

    def test_counting_units(self):
        np.testing.assert_array_equal(collision.counting_units(PER_FRAME, "video"),
                                      [[0, 2, 3, 0, 0, 0], [0, 6, 0, 0, 0, 0]])
        np.testing.assert_array_equal(collision.counting_units(PER_FRAME, "frame"),
                                      PER_FRAME.reshape(4, 6))
        with self.assertRaisesRegex(ValueError, "collision_unit"):
            collision.counting_units(PER_FRAME, "clip")

    def test_top_pairs(self):
        self.assertEqual(collision.top_pairs(PAIRS, limit=3), [
            {"old": 1, "new": 3, "pixels": 7}, {"old": 2, "new": 4, "pixels": 2},
            {"old": 1, "new": 4, "pixels": 1}])


class CollisionStatisticsTest(chex.TestCase):

    def test_most_confusing_class_and_ratio(self):
        c_star, ratio, colliding = collision.most_confusing(UNITS)
        np.testing.assert_array_equal(colliding, [1, 0, 1, 1, 1, 1, 1])
        np.testing.assert_array_equal(c_star[colliding], [1, 1, 3, 1, 2, 1])
        chex.assert_trees_all_close(ratio, np.array([0.75, 0, 0.5, 0.8, 1.0, 0.9, 0.875]),
                                    rtol=RTOL_F64)

    def test_thresholds_of_the_three_rules(self):
        stats = collision.most_confusing(UNITS)
        mean = collision.significance_threshold(*stats, "mean", 3)
        uniform = collision.significance_threshold(*stats, "uniform", 3)
        class_mean = collision.significance_threshold(*stats, "class_mean", 3)
        # (A) mean of the six colliding ratios = 4.825 / 6; (B) 1 / 3 old classes;
        # (C) per-class means: c1 (0.75 + 0.5 + 1.0 + 0.875) / 4, c2 0.9, c3 0.8.
        np.testing.assert_allclose(mean, sum(UNIT_RATIOS) / 6, rtol=RTOL_F64)
        np.testing.assert_allclose(uniform, 1 / 3, rtol=RTOL_F64)
        np.testing.assert_allclose(class_mean, (3.125 / 4 + 0.9 + 0.8) / 3, rtol=RTOL_F64)
        nothing = collision.most_confusing(np.zeros((2, 4), np.int64))
        self.assertEqual(collision.significance_threshold(*nothing, "mean", 3), np.inf)

    def test_frequency_counts_significant_collisions_and_sets_zero_to_one(self):
        stats = collision.most_confusing(UNITS)
        # r̄ = 0.804: units with r 1.0 (c1), 0.9 (c2), 0.875 (c1) pass; 0.8 (c3) does not.
        threshold = collision.significance_threshold(*stats, "mean", 3)
        significant, frequency = collision.collision_frequency(*stats, threshold, [1, 2, 3])
        np.testing.assert_array_equal(significant, [2, 1, 0])
        np.testing.assert_array_equal(frequency, [2.0, 1.0, 1.0])
        # r̄ = 1/3: every colliding unit passes -> c1: 4, c2: 1, c3: 1.
        _, frequency = collision.collision_frequency(*stats, 1 / 3, [1, 2, 3])
        np.testing.assert_array_equal(frequency, [4.0, 1.0, 1.0])
        # Strict comparison: r = 1.0 is not above r̄ = 1.0, so nothing is significant.
        significant, frequency = collision.collision_frequency(*stats, 1.0, [1, 2, 3])
        np.testing.assert_array_equal(significant, [0, 0, 0])
        np.testing.assert_array_equal(frequency, [1.0, 1.0, 1.0])

    def test_probabilities_sigmoid_and_standardized(self):
        sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
        f = np.array([2.0, 1.0, 1.0])
        expected = sigmoid(f) / sigmoid(f).sum()
        chex.assert_trees_all_close(collision.replay_probabilities(f), expected, rtol=RTOL_F64)
        # mean 4/3, population std sqrt(2)/3 -> z = (sqrt 2, -1/sqrt 2, -1/sqrt 2).
        z = np.array([np.sqrt(2), -1 / np.sqrt(2), -1 / np.sqrt(2)])
        chex.assert_trees_all_close(collision.replay_probabilities(f, "standardized"),
                                    sigmoid(z) / sigmoid(z).sum(), rtol=RTOL_F64)
        chex.assert_trees_all_close(collision.replay_probabilities(np.ones(4), "standardized"),
                                    np.full(4, 0.25), rtol=RTOL_F64)
        with self.assertRaisesRegex(ValueError, "smoothing"):
            collision.replay_probabilities(f, "softmax")

    def test_statistics_per_video_and_per_frame(self):
        # Video 0: frames [c1: 3, c2: 0], [c1: 0, c2: 2] -> per video c* 1, r 0.6;
        #          per frame c* 1 (r 1.0) and c* 2 (r 1.0).
        # Video 1: one frame [c1: 1, c2: 1] -> c* 1 (tie), r 0.5 both ways.
        per_frame = np.zeros((2, 2, 4), np.int64)
        per_frame[0, 0, 1], per_frame[0, 1, 2] = 3, 2
        per_frame[1, 0, [1, 2]] = 1
        old = np.array([1, 1, 1, 0], bool)
        video = collision.collision_statistics(per_frame, old, unit="video")
        np.testing.assert_array_equal(video.classes, [1, 2])
        np.testing.assert_array_equal(video.collisions, [4, 3])
        np.testing.assert_allclose(video.threshold, (0.6 + 0.5) / 2, rtol=RTOL_F64)
        np.testing.assert_array_equal(video.significant, [1, 0])
        np.testing.assert_array_equal(video.frequency, [1.0, 1.0])
        frame = collision.collision_statistics(per_frame, old, unit="frame")
        np.testing.assert_allclose(frame.threshold, (1.0 + 1.0 + 0.5) / 3, rtol=RTOL_F64)
        np.testing.assert_array_equal(frame.significant, [1, 1])
        self.assertEqual((video.colliding_units, frame.colliding_units), (2, 3))


    def test_clip_pairs_by_hand(self):
        # One clip of two 1x3 frames, K = 5, old {0, 1, 2}, new {3, 4}; the second frame is
        # unannotated. Frame 0: labels (3, 4, 3), old predictions (1, 1, 0): pairs (1, 3), (1, 4).
        labels = np.array([[[[3, 4, 3]], [[3, 3, 3]]]], np.int32)
        pred = np.array([[[[1, 1, 0]], [[2, 2, 2]]]], np.int32)
        old, current = np.array([1, 1, 1, 0, 0], bool), np.array([0, 0, 0, 1, 1], bool)
        got = np.asarray(collision.clip_pair_counts(pred, labels, old, current,
                                                    np.array([[1.0, 0.0]]), 5))
        expected = np.zeros((1, 25), np.int64)
        expected[0, [1 * 5 + 3, 1 * 5 + 4]] = 1
        np.testing.assert_array_equal(got, expected)

    def test_dominant_pair_and_the_authors_fixed_share(self):
        # K = 5, old {0, 1, 2}, new {3, 4}. Video 0: (1,3) 4, (1,4) 4, (2,3) 5 pixels: by class,
        # c* = 1 with 8/13; by pair (the authors' code), (2, 3) with 5/13, so c* = 2.
        # Video 1: (1,3) 8, (2,3) 2 -> share 0.8 > 0.7. Video 2: (1,3) 7, (2,3) 3 -> share 0.7,
        # not above it (strict, avss/train.py:129). Video 3: no collision.
        clip_pairs = np.zeros((4, 5, 5), np.int64)
        clip_pairs[0, 1, 3], clip_pairs[0, 1, 4], clip_pairs[0, 2, 3] = 4, 4, 5
        clip_pairs[1, 1, 3], clip_pairs[1, 2, 3] = 8, 2
        clip_pairs[2, 1, 3], clip_pairs[2, 2, 3] = 7, 3
        per_frame = clip_pairs.sum(axis=2)[:, None, :]  # one frame per video: N(c) by class
        old = np.array([1, 1, 1, 0, 0], bool)
        flat = clip_pairs.reshape(4, 25)
        authors = collision.collision_statistics(per_frame, old, "video_pair", "fixed",
                                                 clip_pairs=flat)
        self.assertEqual(authors.threshold, 0.7)
        np.testing.assert_array_equal(authors.significant, [1, 0])  # video 1 only
        np.testing.assert_array_equal(authors.collisions, [23, 10])
        self.assertEqual(authors.colliding_units, 3)
        low = collision.collision_statistics(per_frame, old, "video_pair", "fixed",
                                             clip_pairs=flat, share=0.3)
        np.testing.assert_array_equal(low.significant, [2, 1])  # video 0 counts for class 2
        by_class = collision.collision_statistics(per_frame, old, "video", "fixed", share=0.3)
        np.testing.assert_array_equal(by_class.significant, [3, 0])  # video 0 for class 1
        with self.assertRaisesRegex(ValueError, "needs the per-video pair counts"):
            collision.collision_statistics(per_frame, old, "video_pair", "fixed")
        with self.assertRaisesRegex(ValueError, "significance_share=1.5"):
            collision.collision_statistics(per_frame, old, "video", "fixed", share=1.5)


class ResampleTest(absltest.TestCase):

    def test_resample_count_rounds_half_up(self):
        self.assertEqual([collision.resample_count(n, 0.2) for n in (0, 12, 13, 15, 40)],
                         [0, 2, 3, 3, 8])
        self.assertEqual(collision.resample_count(5, 0.5), 3)  # 2.5 -> 3 (numpy's round: 2)

    def test_draws_follow_the_probabilities_and_are_reproducible(self):
        videos = {1: np.array([10, 11]), 2: np.array([20]), 3: np.array([], np.int64)}
        p = np.array([0.5, 0.3, 0.2])
        count = 40_000
        classes, draws = collision.resample(videos, [1, 2, 3], p, count,
                                            np.random.default_rng(0))
        again = collision.resample(videos, [1, 2, 3], p, count, np.random.default_rng(0))
        np.testing.assert_array_equal(draws, again[1])
        np.testing.assert_array_equal(classes, again[0])
        self.assertEqual(draws.shape, (count,))
        # Every draw comes from its class's memory videos.
        np.testing.assert_array_equal(classes == 1, np.isin(draws, [10, 11]))
        self.assertTrue(set(np.unique(draws)) <= {10, 11, 20})
        # Class 3 has no memory video: p renormalises to (0.625, 0.375).
        share_1 = np.isin(draws, [10, 11]).mean()
        sigma = np.sqrt(0.625 * 0.375 / count)
        self.assertLess(abs(share_1 - 0.625), 5 * sigma)
        within = (draws[np.isin(draws, [10, 11])] == 10).mean()
        self.assertLess(abs(within - 0.5), 5 * np.sqrt(0.25 / (count * 0.625)))
        self.assertEqual(collision.resample(videos, [1, 2, 3], p, 0,
                                            np.random.default_rng(0))[1].size, 0)

    def test_empty_memory_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "memory holds no video"):
            collision.resample({1: np.array([], np.int64)}, [1], np.ones(1), 3,
                               np.random.default_rng(0))
