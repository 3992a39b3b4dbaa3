"""The replay memory selection (random, herding, class feature sums) and the Replay strategy's
per-class memory across tasks, vs values derived by hand, on the tiny model and task helpers of
test_strategies_importance.py. Tolerances: rtol = 1e-6 on hand-derived values of a handful of
O(1) float32 operations (a few ulps).
"""

import json
import os
import tempfile

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from jax_cavs.cl import selection
from jax_cavs.cl.strategies.replay import Replay
from jax_cavs.problems.cavs import class_features
from test_strategies_importance import (NUM_CLASSES, TINY, make_batch, make_context, task_info,
                                        tiny_state)


# ----------------------------------------------------------------------------------------
# Replay memory selection.


def _stats(pixels, features=None):
    pixels = np.asarray(pixels, np.float32)
    return selection.ClipStatistics(ids=100 + np.arange(pixels.shape[0]), pixels=pixels,
                                    features=features)


class SelectionTest(absltest.TestCase):

    def test_random_selection_budget_membership_and_seed(self):
        pixels = np.zeros((30, NUM_CLASSES))
        pixels[:20, 1] = 5        # class 1: rows 0..19
        pixels[[3, 25], 2] = 1    # class 2: rows 3 and 25 only
        stats = _stats(pixels)
        chosen = selection.random_selection(stats, (1, 2, 3), 4, np.random.default_rng(0))
        self.assertLen(chosen[1], 4)
        self.assertLen(set(chosen[1].tolist()), 4)
        self.assertTrue(set(chosen[1].tolist()) <= set(range(100, 120)))
        self.assertCountEqual(chosen[2].tolist(), [103, 125])  # fewer videos than the budget
        self.assertLen(chosen[3], 0)
        again = selection.random_selection(stats, (1, 2, 3), 4, np.random.default_rng(0))
        np.testing.assert_array_equal(again[1], chosen[1])
        other = selection.random_selection(stats, (1, 2, 3), 4, np.random.default_rng(1))
        self.assertFalse(np.array_equal(other[1], chosen[1]))

    def test_herding_by_hand(self):
        # Unit directions a = (1, 0), b = (0, 1), c = (0.8, 0.6), d = (0.28, 0.96), given at
        # other lengths (herding normalises). μ = (0.52, 0.64).
        # k=1: ‖μ − φ‖² = a 0.64, b 0.40, c 0.08, d 0.16                      -> c
        # k=2: ‖μ − (φ + c)/2‖² = a 0.26, b 0.04, d 0.02                      -> d
        # k=3: ‖μ − (φ + c + d)/3‖² = a 0.0444, b 0.0711                       -> a, then b.
        features = np.array([[2.0, 0.0], [0.0, 5.0], [0.8, 0.6], [0.84, 2.88]])
        np.testing.assert_array_equal(selection.herding_order(features, 4), [2, 3, 0, 1])
        np.testing.assert_array_equal(selection.herding_order(features, 2), [2, 3])
        # Through the per-class selection: row 4 lies exactly along μ but lacks class 1.
        per_class = np.zeros((5, NUM_CLASSES, 2))
        per_class[:4, 1] = features
        per_class[4, 1] = [0.52, 0.64]
        pixels = np.zeros((5, NUM_CLASSES))
        pixels[:4, 1] = 1
        chosen = selection.herding_selection(_stats(pixels, per_class), (1,), 2)
        np.testing.assert_array_equal(chosen[1], [102, 103])

    def test_herding_picks_survive_last_bit_perturbations(self):
        # Two copies of c (rows 2 and 4): tied, so the earlier wins, and a perturbation of
        # 1e-7 (float32 rounding of another process count's features) that makes row 4 the
        # exact argmin changes nothing; a real difference (1e-3) still decides.
        base = np.array([[2.0, 0.0], [0.0, 5.0], [0.8, 0.6], [0.84, 2.88], [0.8, 0.6]])
        for delta in (0.0, 1e-7, -1e-7):
            features = base.copy()
            features[4] += [delta, -delta]
            self.assertEqual(int(selection.herding_order(features, 1)[0]), 2)
        features = base.copy()
        features[4] = [0.7, 0.72]  # closer to μ = mean of the 5 normalised rows than c
        mean = (features / np.linalg.norm(features, axis=1, keepdims=True)).mean(0)
        distances = np.linalg.norm(mean - features / np.linalg.norm(features, axis=1,
                                                                    keepdims=True), axis=1)
        self.assertEqual(int(selection.herding_order(features, 1)[0]), int(np.argmin(distances)))
        self.assertGreater(np.sort(distances)[1] - distances.min(),
                           selection.HERDING_TIE_TOLERANCE)

    def test_class_feature_sums_by_hand(self):
        # One clip, one frame, 4x4 labels, 2x2 feature map (1 channel = the cell's number).
        labels = np.array([[1, 1, 0, 0],
                           [1, 0, 0, 0],
                           [2, 2, 255, 255],
                           [2, 2, 255, 255]])[None, None]
        features = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
        sums, weights = class_features.class_feature_sums(jnp.asarray(features),
                                                          jnp.asarray(labels), 3)
        # Pooled one-hot per cell (top-left, top-right, bottom-left, bottom-right):
        # class 0: 1/4, 1, 0, 0; class 1: 3/4, 0, 0, 0; class 2: 0, 0, 1, 0.
        np.testing.assert_allclose(weights, [[1.25, 0.75, 1.0]], rtol=1e-6)
        np.testing.assert_allclose(sums[..., 0], [[0.25 * 0 + 1.0 * 1, 0.0, 2.0]], rtol=1e-6)


class ReplayTest(parameterized.TestCase):

    @parameterized.parameters("random", "herding")
    def test_memory_keeps_per_class_budgets_across_tasks(self, rule):
        strategy = Replay(per_class=2, selection=rule, problem=TINY)
        self.assertEqual(strategy.memory_capacity(NUM_CLASSES), 6)
        rng = np.random.default_rng(3)

        def videos(first_id, class_sets):
            batch = make_batch(rng, clips=len(class_sets))
            batch["labels"][:] = 0
            for clip, classes in enumerate(class_sets):
                for j, c in enumerate(classes):
                    batch["labels"][clip, 0, j, :] = c
            batch["index"] = np.arange(first_id, first_id + len(class_sets), dtype=np.int32)
            return batch

        # Task 0 learns classes 1, 2: class 1 in videos 10..13, class 2 only in video 13.
        task0 = task_info(0, (1, 2), (0, 1, 2))
        state = tiny_state(strategy, task0, capacity=6)
        data0 = [videos(10, [(1,), (1,), (1,), (1, 2)])]
        workdir = self.enterContext(tempfile.TemporaryDirectory())
        state = strategy.end_task(state, make_context(task0, data0, workdir))
        with open(os.path.join(workdir, "memory", "replay_0.json")) as f:
            record = json.load(f)
        first = {c: set(state.memory.ids_of_class(c).tolist()) for c in (1, 2)}
        self.assertLen(first[1], 2)
        self.assertTrue(first[1] <= {10, 11, 12, 13})
        self.assertEqual(first[2], {13})
        self.assertEqual(record["selection"], rule)
        self.assertEqual({c: set(v) for c, v in record["classes"].items()},
                         {"1": first[1], "2": first[2]})
        # Task 1 learns class 3 (videos 20..22); the old classes' entries stay as they were.
        task1 = task_info(1, (3,), (0, 1, 2, 3))
        state = strategy.begin_task(state, task1)
        data1 = [videos(20, [(3,), (3,), (3,)])]
        state = strategy.end_task(state, make_context(task1, data1, workdir, seed=1))
        for c in (1, 2):
            self.assertEqual(set(state.memory.ids_of_class(c).tolist()), first[c])
        third = set(state.memory.ids_of_class(3).tolist())
        self.assertLen(third, 2)
        self.assertTrue(third <= {20, 21, 22})
        self.assertCountEqual(strategy.replay_ids(state, None).tolist(),
                              first[1] | first[2] | third)


if __name__ == "__main__":
    absltest.main()
