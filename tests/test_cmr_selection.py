"""CMR's MSS (spec_cavs §6) on tiny hand-made masks whose values are derived in the comments:
the per-video scores, the class presence, the selection rules and the memory they fill.
Tolerances: test_cmr.py's doc.
"""

import functools

import chex
import numpy as np
from absl.testing import absltest

from jax_cavs.problems.cavs import mss
from jax_cavs.core.memory import ReplayMemory
from test_cmr import RTOL_F32


# -- MSS: tiny hand-made masks ----------------------------------------------------------------
# K = 3. Video 0, frame 0: label [[0,1],[1,1]], pred [[0,1],[0,1]] -> IoU_bg 1/2, IoU_1 2/3:
# 7/12 under both conventions. Frame 1: label [[2,2],[0,255]], pred [[1,2],[0,0]] (one pixel
# ignored) -> IoU_bg 1, IoU_1 0 (predicted, absent), IoU_2 1/2: "union" 1/2, "avsbench" 3/4.
# Video 1: frame 0 fully ignored (NaN, skipped), frame 1 unannotated -> no scored frame -> 0.
# The authors' "sum" (every class's IoU summed over the frames): 7/6 + 3/2 = 8/3 and 0.
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
        fn = self.variant(functools.partial(mss.video_scores, num_classes=3, convention="sum"))
        chex.assert_trees_all_close(fn(SCORE_PRED, SCORE_LABELS, weights),
                                    np.array([8 / 3, 0.0], np.float32), rtol=RTOL_F32)
        chex.assert_trees_all_close(fn(SCORE_PRED, SCORE_LABELS, np.array([[1, 0], [1, 0]])),
                                    np.array([7 / 6, 0.0], np.float32), rtol=RTOL_F32)

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
