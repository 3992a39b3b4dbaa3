"""CMR's MSS and CSR (spec_cavs §6) against hand-computed values and the generator's truth.

Unit tests check every CSR step (collision counts, c*, r, r̄ under the three rules, f with
0 -> 1, p, the resampling count and draw) and the MSS scores and selection rules on tiny
hand-made masks whose values are derived in the comments.

The two SynthAVS tests use the generator's ground truth (``SynthAVSGenerator.plan``):

* **MSS avoids low-consistency clips.** The predictions are simulated from what each clip
  physically contains, never from its consistency value: the audio-visual "model" labels a
  visible object in a frame when its class's sound is in that frame's audio (emitted, at an
  audible SNR); the visual-only "model" labels every visible object, sounding or silent. Clips
  whose audio disagrees with the labels (late onset, early offset, mismatched sound, weak
  SNR) are then exactly those where audio changes the segmentation for the worse, the
  situation MSS is meant to screen out. What is tested is the selection rule and its
  scoring code: per-frame mIoU -> per-video score -> Δ -> ranking by |Δ|. The test checks
  that MSS keeps clearly fewer low-consistency clips than random selection (averaged over
  seeds) and that the signed "smallest" rule, which prefers Δ < 0, keeps more: the sign
  convention of eq 5 matters. Whether a *trained* model behaves like the simulation is
  measured by the benchmark (benchmarks/cmr_ablation.py), not here.
* **CSR finds a planted confusion.** On generator clips, a simulated old model mistakes one
  new class for one old class on most of its pixels (a systematic co-occurrence confusion)
  while spreading more collision pixels in total over another old class as a minority in
  every video. CSR must rank the planted class first in frequency and probability, although
  the other class has the most raw collision pixels: the ratio test of eqs 6-8 is what finds
  it.

Tolerances: the scores are means of a few float32 ratios of small integers (rtol 1e-6); the
CSR statistics are float64 numpy (rtol 1e-12); the resampling frequencies are binomial, so
the tolerance is 5 standard deviations of the class share.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from data_pipelines.synth_avs_config import SynthAVSConfig
from data_pipelines.synth_avs_scenes import (FULL_CONSISTENCY_SNR_DB, ZERO_CONSISTENCY_SNR_DB,
                                             SynthAVSGenerator)
from jax_cavs.problems.cavs import collision
from jax_cavs.problems.cavs import mss
from jax_cavs.problems.cavs.problem import CAVSProblem
from jax_cavs.core.memory import ReplayMemory

RTOL_F32 = 1e-6
RTOL_F64 = 1e-12

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


# -- MSS: tiny hand-made masks ----------------------------------------------------------------
# K = 3. Video 0, frame 0: label [[0,1],[1,1]], pred [[0,1],[0,1]] -> IoU_bg 1/2, IoU_1 2/3:
# 7/12 under both conventions. Frame 1: label [[2,2],[0,255]], pred [[1,2],[0,0]] (one pixel
# ignored) -> IoU_bg 1, IoU_1 0 (predicted, absent), IoU_2 1/2: "union" 1/2, "avsbench" 3/4.
# Video 1: frame 0 fully ignored (NaN, skipped), frame 1 unannotated -> no scored frame -> 0.
SCORE_LABELS = np.array([[[[0, 1], [1, 1]], [[2, 2], [0, 255]]],
                         [[[255, 255], [255, 255]], [[1, 1], [1, 1]]]], np.int32)
SCORE_PRED = np.array([[[[0, 1], [0, 1]], [[1, 2], [0, 0]]],
                       [[[1, 1], [1, 1]], [[0, 0], [0, 0]]]], np.int32)


class VideoScoreTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_video_scores_by_hand(self):
        weights = np.array([[1.0, 1.0], [1.0, 0.0]], np.float32)
        for convention, frame_1 in (("union", 1 / 2), ("avsbench", 3 / 4)):
            fn = self.variant(functools.partial(mss.video_scores, num_classes=3,
                                                convention=convention))
            chex.assert_trees_all_close(
                fn(SCORE_PRED, SCORE_LABELS, weights),
                np.array([(7 / 12 + frame_1) / 2, 0.0], np.float32), rtol=RTOL_F32)
        fn = self.variant(functools.partial(mss.video_scores, num_classes=3))
        chex.assert_trees_all_close(fn(SCORE_PRED, SCORE_LABELS, np.array([[1, 0], [1, 0]])),
                                    np.array([7 / 12, 0.0], np.float32), rtol=RTOL_F32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_class_presence_uses_weighted_frames_only(self):
        fn = self.variant(functools.partial(mss.class_presence, num_classes=3))
        np.testing.assert_array_equal(fn(SCORE_LABELS, np.array([[1, 1], [1, 0]])),
                                      [[1, 1, 1], [0, 0, 0]])
        np.testing.assert_array_equal(fn(SCORE_LABELS, np.array([[1, 0], [1, 1]])),
                                      [[1, 1, 0], [0, 1, 0]])


def _scores(deviations, presence, ids=None):
    deviations = np.asarray(deviations, np.float64)
    av = np.full_like(deviations, 0.5)
    return mss.VideoScores(ids=np.arange(len(deviations)) if ids is None else np.asarray(ids),
                           av=av, v=av - deviations, presence=np.asarray(presence, bool))


class SelectionTest(absltest.TestCase):
    # Six videos of class 1 (K = 3) with deviations Δ; video 5 ties video 0 on |Δ|.
    DEV = [0.10, -0.30, 0.02, 0.25, -0.05, -0.10]
    PRESENCE = [[0, 1, 0]] * 6

    def test_rules_rank_by_their_key_with_ties_by_id(self):
        scores = _scores(self.DEV, self.PRESENCE, ids=[40, 41, 42, 43, 44, 45])
        pick = lambda rule: mss.select(rule, scores, [1], 3, None)[1].tolist()
        self.assertEqual(pick("mss"), [2, 4, 0])        # |Δ| 0.02, 0.05, 0.10 (id 40 < 45)
        self.assertEqual(pick("smallest"), [1, 5, 4])   # Δ -0.30, -0.10, -0.05
        self.assertEqual(pick("largest"), [3, 0, 2])    # Δ 0.25, 0.10, 0.02

    def test_last_bit_differences_of_the_scores_rank_as_ties(self):
        # Video 5's |Δ| is below video 0's by 1e-8 (another process count's float32
        # rounding): still tied, so id 40 comes first; 1e-4 below still decides.
        for delta, first in ((1e-8, 0), (1e-4, 5)):
            dev = list(self.DEV)
            dev[5] = -(0.10 - delta)
            scores = _scores(dev, self.PRESENCE, ids=[40, 41, 42, 43, 44, 45])
            self.assertEqual(mss.select("mss", scores, [1], 4, None)[1].tolist()[2], first)

    def test_random_is_seeded_distinct_and_within_the_class(self):
        presence = self.PRESENCE + [[0, 0, 1]] * 2
        scores = _scores(self.DEV + [0.0, 0.0], presence)
        first = mss.select("random", scores, [1, 2], 4, np.random.default_rng(3))
        again = mss.select("random", scores, [1, 2], 4, np.random.default_rng(3))
        np.testing.assert_array_equal(first[1], again[1])
        self.assertEqual(len(set(first[1].tolist())), 4)
        self.assertTrue(set(first[1].tolist()) <= set(range(6)))
        self.assertEqual(sorted(first[2].tolist()), [6, 7])  # only two videos of class 2

    def test_invalid_rule_names_the_config_field(self):
        with self.assertRaisesRegex(ValueError, "strategy.selection"):
            mss.select("best", _scores(self.DEV, self.PRESENCE), [1], 3, None)

    def test_multi_class_video_is_stored_once_with_all_tags(self):
        # Video 7 (position 1) holds classes 3 and 4 and has the smallest |Δ| for both.
        presence = np.zeros((4, 6), bool)
        presence[[0, 1], 3] = True
        presence[[1, 2, 3], 4] = True
        scores = _scores([0.2, 0.01, -0.3, 0.4], presence, ids=[5, 7, 9, 11])
        selection = mss.select("mss", scores, [3, 4], 2, None)
        self.assertEqual(selection[3].tolist(), [1, 0])
        self.assertEqual(selection[4].tolist(), [1, 2])
        memory = mss.add_to_memory(ReplayMemory.empty(10, 6), scores, selection)
        self.assertEqual(memory.size(), 3)
        self.assertEqual(sorted(memory.record_ids().tolist()), [5, 7, 9])
        self.assertEqual(sorted(memory.ids_of_class(3).tolist()), [5, 7])
        self.assertEqual(sorted(memory.ids_of_class(4).tolist()), [7, 9])
        slot = int(np.flatnonzero(np.asarray(memory.ids) == 7)[0])
        np.testing.assert_array_equal(np.flatnonzero(np.asarray(memory.tags)[slot]), [3, 4])
        chex.assert_trees_all_close(np.asarray(memory.scores)[slot],
                                    np.array([0.5, 0.49, 0.01], np.float32), rtol=RTOL_F32)
        record = mss.selection_record(2, scores, selection, rule="mss")
        self.assertEqual(record["task"], 2)
        self.assertEqual(record["rule"], "mss")
        self.assertEqual([s["id"] for s in record["classes"]["3"]["selected"]], [7, 5])
        self.assertEqual([s["id"] for s in record["classes"]["4"]["selected"]], [7, 9])
        self.assertEqual([s["id"] for s in record["classes"]["4"]["scored"]], [7, 9, 11])
        np.testing.assert_allclose(record["classes"]["3"]["selected"][0]["deviation"], 0.01)


# -- SynthAVS ground truth ----------------------------------------------------------------------

CONFIG = SynthAVSConfig(name="cmr_test", num_classes=8, num_communities=2, image_size=32,
                        num_frames=5, train_clips_per_class=16, test_clips_per_class=1)
K = CONFIG.num_classes + 1


@pytest.fixture(scope="module")
def plans():
    generator = SynthAVSGenerator.from_config(CONFIG)
    return [generator.plan("train", i) for i in range(CONFIG.num_clips("train"))]


def _simulated_predictions(plan):
    """(audio-visual, visual-only) predictions int32 [T, H, W] from the clip's content.

    Audio-visual: a visible object is labelled in a frame when its class's sound is in that
    frame's audio at an audible SNR (>= 0 dB, half-way on the generator's audibility scale).
    Visual-only: every visible object is labelled, sounding or not.
    """
    audible = ((plan.snr_db - ZERO_CONSISTENCY_SNR_DB)
               / (FULL_CONSISTENCY_SNR_DB - ZERO_CONSISTENCY_SNR_DB)) >= 0.5
    heard = np.zeros((CONFIG.num_frames, K), bool)
    for obj in plan.objects:
        if obj.sounding and audible:
            heard[obj.emitted, obj.emitted_class] = True
    av = np.zeros(plan.top.shape, np.int32)
    v = np.zeros(plan.top.shape, np.int32)
    for o, obj in enumerate(plan.objects):
        visible = (plan.top == o) & plan.frame_mask[:, None, None]
        v[visible] = obj.class_id
        av[visible & heard[:, obj.class_id][:, None, None]] = obj.class_id
    return av, v


def _frame_weights(plans):
    return np.stack([p.label_mask & p.frame_mask for p in plans]).astype(np.float32)


def test_mss_selects_fewer_low_consistency_clips_than_random(plans):
    labels = np.stack([p.labels() for p in plans]).astype(np.int32)
    weights = _frame_weights(plans)
    av, v = (np.stack(x) for x in zip(*map(_simulated_predictions, plans)))
    score = functools.partial(mss.video_scores, num_classes=K)
    scores = mss.VideoScores(
        ids=np.arange(len(plans)), av=np.asarray(score(av, labels, weights), np.float64),
        v=np.asarray(score(v, labels, weights), np.float64),
        presence=np.asarray(mss.class_presence(labels, weights, K)))
    low = np.array([p.consistency() < 1.0 for p in plans])
    assert 0.1 < low.mean() < 0.3  # low_consistency_share = 0.2 of the train clips

    def low_share(rule, rng=None):
        chosen = mss.select(rule, scores, range(1, K), 5, rng)
        return low[np.unique(np.concatenate(list(chosen.values())))].mean()

    random_share = np.mean([low_share("random", np.random.default_rng(s)) for s in range(40)])
    assert abs(random_share - low.mean()) < 0.05  # random keeps the base rate
    assert low_share("mss") < 0.5 * random_share
    assert low_share("smallest") > random_share


def test_csr_ranks_a_planted_confusion_first(plans):
    old_classes, new_classes, planted_old, planted_new, spread_old = (1, 2, 3, 4), \
        (5, 6, 7, 8), 2, 6, 3
    old = np.zeros(K, bool)
    old[[0, *old_classes]] = True
    current = np.zeros(K, bool)
    current[list(new_classes)] = True
    task = [p for p in plans if set(p.classes()) & set(new_classes)]
    labels = np.stack([p.labels() for p in task]).astype(np.int32)
    labels = np.where(current[labels], labels, 0)  # the task's labels: new classes only
    rng = np.random.default_rng(0)
    pred = np.zeros_like(labels)
    for i in range(len(task)):
        # Per video, a random third old class takes part of the non-planted collisions.
        other = rng.choice([c for c in old_classes if c not in (planted_old, spread_old)])
        raster = np.arange(labels[i].size).reshape(labels[i].shape) % 10
        planted = labels[i] == planted_new
        rest = current[labels[i]] & ~planted
        pred[i][planted] = np.where(raster[planted] < 8, planted_old, spread_old)
        pred[i][rest] = np.select([raster[rest] < 4, raster[rest] < 7], [spread_old, other], 0)
    per_frame, pairs = collision.collision_counts(pred, labels, old, current,
                                                  _frame_weights(task), K)
    stats = collision.collision_statistics(np.asarray(per_frame), old)
    by_class = dict(zip(stats.classes.tolist(), range(len(stats.classes))))
    assert np.argmax(stats.collisions) == by_class[spread_old]  # most raw pixels
    assert np.argmax(stats.frequency) == by_class[planted_old]
    assert np.argmax(stats.probability) == by_class[planted_old]
    assert stats.probability[by_class[planted_old]] > stats.probability.min()
    np.testing.assert_allclose(stats.probability.sum(), 1.0, rtol=RTOL_F64)
    assert collision.top_pairs(np.asarray(pairs), 1)[0]["old"] in (planted_old, spread_old)


# -- the strategy's glue and config ---------------------------------------------------------------

class StrategyTest(absltest.TestCase):

    def test_invalid_fields_name_the_config_field(self):
        from jax_cavs.problems.cavs.strategies.cmr import CMR
        for field, value in (("selection", "best"), ("significance", "median"),
                             ("collision_unit", "clip"), ("score_classes", "all"),
                             ("memory_pseudo_labels", "old"), ("twin_loss", "kd"),
                             ("visual_model", "none")):
            with self.assertRaisesRegex(ValueError, f"strategy.{field}"):
                CMR(**{field: value})
        with self.assertRaisesRegex(ValueError, "strategy.memory_per_class"):
            CMR(memory_per_class=0)

    def test_capacity_and_replay_slots(self):
        from jax_cavs.problems.cavs.strategies.cmr import CMR
        strategy = CMR(memory_per_class=3)
        self.assertEqual(strategy.memory_capacity(17), 48)        # k x (K - 1)
        extras = strategy.init_extras(17)
        self.assertEqual(extras["csr_replay"].shape, (10,))       # round(0.2 x 48)
        self.assertTrue(np.all(np.asarray(extras["csr_replay"]) == -1))
        self.assertIn("thresholds", extras)                       # PLOP's

    def test_full_memory_names_the_real_config_fields(self):
        memory = ReplayMemory.empty(2, 4).add([7, 9], [1, 2])
        with self.assertRaisesRegex(ValueError, r"full \(2 slots.*strategy\.per_class "
                                                r"\(replay\) or strategy\.memory_per_class"):
            memory.add([11], [3])
        from jax_cavs.cl.strategies.replay import Replay  # the fields it names exist
        from jax_cavs.problems.cavs.strategies.cmr import CMR
        self.assertEqual((Replay(per_class=2).per_class, CMR(memory_per_class=2).memory_per_class),
                         (2, 2))

    def test_replay_is_the_memory_plus_the_draw_with_duplicates(self):
        import types
        from jax_cavs.problems.cavs.strategies.cmr import CMR
        memory = ReplayMemory.empty(6, 4).add([7, 9, 7], [1, 2, 3])
        draw = np.array([9, 9, 7, -1], np.int32)
        state = types.SimpleNamespace(memory=memory, extras={"csr_replay": draw})
        self.assertEqual(sorted(CMR().replay_ids(state, None).tolist()), [7, 7, 9, 9, 9])

    def test_memory_pseudo_labels(self):
        """A confident teacher predicts old class 1 everywhere; clip 1 is a replayed clip whose
        true labels hold class 1 and background. PLOP relabels y == 0 of both clips by
        default; with "none" the replayed clip keeps its labels and κ = 1."""
        import types
        from jax_cavs.core.strategy import Outputs
        from jax_cavs.problems.cavs.strategies.cmr import CMR
        labels = np.array([[[[0, 2], [0, 0]]], [[[1, 0], [0, 2]]]], np.int32)  # [2, 1, 2, 2]
        logits = np.zeros((2, 1, 2, 2, 3), np.float32)
        logits[..., 1] = 20.0
        state = types.SimpleNamespace(
            extras={"thresholds": np.ones(3, np.float32)}, task=np.int32(1),
            old=np.array([1, 1, 0], bool), seen=np.ones(3, bool))
        batch = {"labels": labels, "is_memory": np.array([False, True])}
        teacher = Outputs(logits, {})
        relabelled, kappa = CMR().relabel_background(state, batch, teacher)
        np.testing.assert_array_equal(relabelled, [[[[1, 2], [1, 1]]], [[[1, 1], [1, 2]]]])
        relabelled, kappa = CMR(memory_pseudo_labels="none").relabel_background(
            state, batch, teacher)
        np.testing.assert_array_equal(relabelled[0], [[[1, 2], [1, 1]]])
        np.testing.assert_array_equal(relabelled[1], labels[1])
        chex.assert_trees_all_close(np.asarray(kappa)[1], np.ones(1, np.float32))

    def test_collision_record_shape(self):
        from jax_cavs.problems.cavs.strategies.cmr import collision_record
        stats = collision.collision_statistics(PER_FRAME, OLD)
        record = collision_record(3, stats, PAIRS, {1: np.array([5, 6]), 2: np.array([8])},
                                  np.array([1, 1, 2]), np.array([5, 5, 8]), 3, unit="video")
        self.assertEqual(record["task"], 3)
        self.assertEqual(sorted(record["classes"]), ["1", "2"])
        entry = record["classes"]["1"]
        self.assertEqual((entry["collisions"], entry["draws"], entry["memory_videos"]),
                         (8, 2, 2))
        self.assertAlmostEqual(sum(e["probability"] for e in record["classes"].values()), 1.0)
        self.assertEqual(record["top_pairs"][0], {"old": 1, "new": 3, "pixels": 7})
        self.assertEqual(record["replay"], [5, 5, 8])


def test_config_arguments():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "cmr.py")
    spec = importlib.util.spec_from_file_location("cmr_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    default = module.get_config()
    assert (default.strategy.name, default.strategy.memory_per_class,
            default.strategy.selection, default.strategy.csr,
            default.strategy.resample_ratio) == ("cmr", 5, "mss", True, 0.2)
    ablation = module.get_config("selection=random,csr=False,memory=3,visual=zero_audio,"
                                 "runlocal")
    assert (ablation.strategy.selection, ablation.strategy.csr,
            ablation.strategy.memory_per_class, ablation.strategy.visual_model,
            ablation.dataset.config) == ("random", False, 3, "zero_audio", "tiny")
    from jax_cavs.problems.cavs.strategies import get_strategy
    hparams = {k: v for k, v in default.strategy.items() if k != "name"}
    assert get_strategy("cmr", hparams).selection == "mss"


# -- the jit'd passes over padded batches, with a stub model ------------------------------------

class _StubModel:
    """Stands in for ``AVSModel`` inside ``CAVSProblem.apply``: one-hot logits of class
    ``frames[..., 0]``, or of ``frames[..., 1]`` on frames whose audio is nonzero."""

    num_classes = 4

    @staticmethod
    def apply(variables, frames, audio, frame_mask, train=False):
        heard = jnp.any(audio != 0, axis=(-2, -1))[..., None, None]
        classes = jnp.where(heard, frames[..., 1], frames[..., 0]).astype(jnp.int32)
        return jax.nn.one_hot(classes, 4) * variables["params"]["scale"], {}


def _stub_batches(frames, labels, audio_on, batch_size=2):
    """Eval batches as ``TaskContext.batches`` yields them: padded with ``valid = 0`` clips."""
    n, t = labels.shape[:2]
    pad = (-n) % batch_size
    index = np.concatenate([np.arange(n), np.full(pad, n - 1)])
    for start in range(0, n + pad, batch_size):
        rows = index[start:start + batch_size]
        yield {"frames": frames[rows], "labels": labels[rows],
               "audio": np.where(audio_on[rows][:, :, None, None], 1.0, 0.0) * np.ones(
                   (len(rows), t, 96, 64), np.float32),
               "label_mask": np.ones((len(rows), t), np.float32),
               "frame_mask": np.ones((len(rows), t), np.float32),
               "index": (100 + rows).astype(np.int32),
               "valid": (np.arange(start, start + len(rows)) < n).astype(np.float32)}


class PassTest(absltest.TestCase):
    """Three clips (one padded batch slot), K = 4, 2 frames of 2x2: the passes must match the
    same functions applied to the predictions computed here directly."""

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.labels = rng.integers(0, 4, (3, 2, 2, 2)).astype(np.int32)
        self.visual = rng.integers(0, 4, (3, 2, 2, 2))
        self.audio_class = rng.integers(0, 4, (3, 2, 2, 2))
        self.frames = np.stack([self.visual, self.audio_class, self.visual], -1).astype(
            np.float32)
        self.audio_on = np.array([[1, 0], [1, 1], [0, 0]], bool)
        self.params = ({"scale": jnp.float32(1.0)}, {})

    def test_mss_pass_scores_both_models_and_drops_padding(self):
        classes = np.ones(4, bool)
        scores = mss.score_videos(CAVSProblem(_StubModel()), self.params, self.params, classes,
                                  _stub_batches(self.frames, self.labels, self.audio_on),
                                  lambda batch: batch)
        av_pred = np.where(self.audio_on[..., None, None], self.audio_class, self.visual)
        weights = np.ones((3, 2), np.float32)
        np.testing.assert_array_equal(scores.ids, [100, 101, 102])
        chex.assert_trees_all_close(
            scores.av, np.asarray(mss.video_scores(av_pred, self.labels, weights, 4),
                                  np.float64), rtol=RTOL_F32)
        chex.assert_trees_all_close(        # the visual-only model never hears the audio
            scores.v, np.asarray(mss.video_scores(self.visual, self.labels, weights, 4),
                                 np.float64), rtol=RTOL_F32)
        np.testing.assert_array_equal(scores.presence,
                                      mss.class_presence(self.labels, weights, 4))

    def test_collision_pass_uses_the_old_classes_only(self):
        old = np.array([1, 1, 0, 0], bool)
        current = np.array([0, 0, 1, 1], bool)
        ids, per_frame, pairs = collision.old_model_collisions(
            CAVSProblem(_StubModel()), *self.params, old, current,
            _stub_batches(self.frames, self.labels, self.audio_on), lambda batch: batch)
        # The old model's argmax over {0, 1}: class 1 where the one-hot class is 1, else 0.
        av_class = np.where(self.audio_on[..., None, None], self.audio_class, self.visual)
        pred = np.where(av_class == 1, 1, 0)
        expected, expected_pairs = collision.collision_counts(
            pred, self.labels, old, current, np.ones((3, 2)), 4)
        np.testing.assert_array_equal(ids, [100, 101, 102])
        np.testing.assert_array_equal(per_frame, expected)
        np.testing.assert_array_equal(pairs, expected_pairs)
        self.assertGreater(per_frame.sum(), 0)
