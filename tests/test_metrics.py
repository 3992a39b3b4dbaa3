"""Segmentation and continual metrics vs hand-computed values on 4x4 frames.

Frame A (K = 3, two ignored pixels) has the confusion matrix [[6,1,1],[1,3,0],[1,0,1]]
(rows = ground truth); frame B is all-background ground truth with one false positive of
class 1; frame C is fully ignored; frame D is a perfect all-background frame.

Tolerances: IoU/F values are one or two float32 divisions of small integers (<= 2 ulp) and
PLOP's 1e-6 epsilon changes IoUs by < 1e-7 relative; rtol=1e-6 holds.
"""

import functools
import json
import types

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from jax_cavs.core import accuracy as continual
from jax_cavs.problems.cavs import metrics as segmentation

RTOL = 1e-6
LABEL_A = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [0, 0, 0, 0]], np.int32)
PRED_A = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 2, 1], [0, 0, 0, 2]], np.int32)
LABEL_B = np.zeros((4, 4), np.int32)
PRED_B = np.zeros((4, 4), np.int32)
PRED_B[0, 0] = 1
LABEL_C = np.full((4, 4), 255, np.int32)
PRED_C = np.ones((4, 4), np.int32)
CONFUSION_A = np.array([[6, 1, 1], [1, 3, 0], [1, 0, 1]])
CONFUSION_B = np.array([[15, 1, 0], [0, 0, 0], [0, 0, 0]])


def _frames(*names):
    frames = {"A": (PRED_A, LABEL_A), "B": (PRED_B, LABEL_B), "C": (PRED_C, LABEL_C),
              "D": (LABEL_B, LABEL_B)}
    pred, label = zip(*(frames[n] for n in names))
    return np.stack(pred), np.stack(label)


class ConfusionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_confusion_matrix_by_hand_with_ignore_and_weights(self):
        pred, label = _frames("A", "B", "C")
        fn = self.variant(functools.partial(segmentation.confusion_matrix, num_classes=3))
        np.testing.assert_array_equal(fn(pred, label), CONFUSION_A + CONFUSION_B)
        weights = np.array([1.0, 0.0, 1.0])[:, None, None]
        np.testing.assert_array_equal(fn(pred, label, weights=weights), CONFUSION_A)

    def test_miou_by_hand(self):
        mean, per_class = segmentation.miou(CONFUSION_A + CONFUSION_B)
        expected = np.array([21 / 26, 3 / 6, 1 / 3], np.float32)
        chex.assert_trees_all_close(per_class, expected, rtol=RTOL)
        chex.assert_trees_all_close(mean, np.float32(expected.mean()), rtol=RTOL)

    def test_classes_absent_from_ground_truth_are_nan_and_skipped(self):
        mean, per_class = segmentation.miou(CONFUSION_B)  # class 1 predicted, never in GT
        self.assertTrue(np.isnan(per_class[1]) and np.isnan(per_class[2]))
        chex.assert_trees_all_close(mean, np.float32(15 / 16), rtol=RTOL)

    def test_int64_confusion_does_not_overflow(self):
        confusion = np.array([[3_000_000_000, 1_000_000_000], [0, 5]], np.int64)
        _, per_class = segmentation.miou(confusion)
        chex.assert_trees_all_close(per_class, np.array([0.75, 5 / 1_000_000_005], np.float32),
                                    rtol=RTOL)

    def test_group_miou_and_report_groups(self):
        groups = segmentation.report_groups([[1], [2]], 3)
        np.testing.assert_array_equal(groups["old"], [True, True, False])
        np.testing.assert_array_equal(groups["new"], [False, False, True])
        np.testing.assert_array_equal(groups["all"], [True, True, True])
        confusion = CONFUSION_A + CONFUSION_B
        mean, per_class = segmentation.miou(confusion)
        old = segmentation.group_miou(per_class, confusion, groups["old"])
        new = segmentation.group_miou(per_class, confusion, groups["new"])
        all_ = segmentation.group_miou(per_class, confusion, groups["all"])
        chex.assert_trees_all_close(old, np.float32((21 / 26 + 0.5) / 2), rtol=RTOL)
        chex.assert_trees_all_close(new, np.float32(1 / 3), rtol=RTOL)
        chex.assert_trees_all_close(all_, mean, rtol=RTOL)
        _, per_class_b = segmentation.miou(CONFUSION_B)
        self.assertTrue(np.isnan(segmentation.group_miou(per_class_b, CONFUSION_B,
                                                         groups["new"])))

    def test_absent_classes_count_zero_as_in_the_cmr_authors_code(self):
        def authors(confusion, group):  # avss/utils/compute_color_metrics.py:112, test.py:200
            hist = np.asarray(confusion, np.float64)
            iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist) + 1e-6)
            return np.mean(iu[group])

        groups = segmentation.report_groups([[1], [2]], 3)
        for confusion in (CONFUSION_B, CONFUSION_A + CONFUSION_B):
            _, per_class = segmentation.miou(confusion)
            for name, group in groups.items():
                got = segmentation.group_miou(per_class, confusion, group, absent="zero")
                chex.assert_trees_all_close(got, np.float32(authors(confusion, group)),
                                            rtol=RTOL, atol=1e-6)
        # By hand on frame B (class 1 predicted once, never in GT; class 2 absent): 15/16, 0, 0.
        _, per_class = segmentation.miou(CONFUSION_B)
        chex.assert_trees_all_close(segmentation.group_miou(
            per_class, CONFUSION_B, groups["old"], absent="zero"), np.float32(15 / 32),
            rtol=RTOL)
        self.assertTrue(np.isnan(segmentation.group_miou(per_class, CONFUSION_B,
                                                         groups["new"])))
        with self.assertRaisesRegex(ValueError, "eval.absent_classes: 'drop'"):
            segmentation.group_miou(per_class, CONFUSION_B, groups["old"], absent="drop")

    def test_report_groups_of_a_three_task_scenario(self):
        groups = segmentation.report_groups([[1, 2], [3], [4]], 6)
        np.testing.assert_array_equal(np.flatnonzero(groups["old"]), [0, 1, 2])
        np.testing.assert_array_equal(np.flatnonzero(groups["new"]), [3, 4])
        last = segmentation.report_groups([[1, 2], [3], [4]], 6, split="last")
        np.testing.assert_array_equal(np.flatnonzero(last["old"]), [0, 1, 2, 3])
        np.testing.assert_array_equal(np.flatnonzero(last["new"]), [4])
        first_only = segmentation.report_groups([[1, 2]], 6, split="last")
        np.testing.assert_array_equal(np.flatnonzero(first_only["old"]), [0, 1, 2])
        self.assertFalse(first_only["new"].any())


class PerFrameTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_class_areas_by_hand(self):
        pred, label = _frames("A", "B")
        inter, pred_area, label_area = self.variant(
            functools.partial(segmentation.class_areas, num_classes=3))(pred, label)
        np.testing.assert_array_equal(inter, [[6, 3, 1], [15, 0, 0]])
        np.testing.assert_array_equal(pred_area, [[8, 4, 2], [15, 1, 0]])  # ignored excluded
        np.testing.assert_array_equal(label_area, [[8, 4, 2], [16, 0, 0]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_frame_miou_conventions(self):
        pred, label = _frames("A", "B", "C", "D")
        union = self.variant(functools.partial(segmentation.per_frame_miou, num_classes=3))(
            pred, label)
        avsbench = self.variant(functools.partial(
            segmentation.per_frame_miou, num_classes=3, convention="avsbench"))(pred, label)
        a = (0.6 + 0.6 + 1 / 3) / 3
        # B: bg IoU 15/16 and class 1 with union 1, no intersection.
        chex.assert_trees_all_close(union, np.array([a, (15 / 16) / 2, np.nan, 1.0],
                                                    np.float32), rtol=RTOL)
        chex.assert_trees_all_close(avsbench, np.array([a, 15 / 16, np.nan, 1.0], np.float32),
                                    rtol=RTOL)

    def test_unknown_convention_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "convention"):
            segmentation.per_frame_miou(PRED_A, LABEL_A, 3, convention="mean")

    @chex.variants(with_jit=True, without_jit=True)
    def test_avsbench_fscore_by_hand(self):
        pred, label = _frames("A", "B")
        areas = segmentation.class_areas(pred, label, 3)
        iou, fscore, present = self.variant(segmentation.avsbench_frame_scores)(*areas)
        # B, bg: P = 15/15, R = 15/16 -> 1.3 P R / (0.3 P + R).
        f_b = 1.3 * (15 / 16) / (0.3 + 15 / 16)
        chex.assert_trees_all_close(fscore, np.array([[0.75, 0.75, 0.5], [f_b, 0, 0]],
                                                     np.float32), rtol=RTOL)
        chex.assert_trees_all_close(iou, np.array([[0.6, 0.6, 1 / 3], [15 / 16, 0, 0]],
                                                  np.float32), rtol=RTOL)
        np.testing.assert_array_equal(present, [[True] * 3, [True, True, False]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_avsbench_dataset_scores_by_hand(self):
        pred, label = _frames("A", "B", "C")
        sums = self.variant(functools.partial(segmentation.avsbench_batch_sums,
                                              num_classes=4))(pred, label)
        scores = segmentation.avsbench_dataset_scores(*sums)
        f_b = 1.3 * (15 / 16) / (0.3 + 15 / 16)
        # Class counts: bg 2 frames, class 1 2 frames (B's false positive), class 2 1 frame,
        # class 3 never (counts 0 in the mean over all 4 classes).
        per_class_iou = np.array([(0.6 + 15 / 16) / 2, 0.6 / 2, 1 / 3, 0.0], np.float32)
        per_class_f = np.array([(0.75 + f_b) / 2, 0.75 / 2, 0.5, 0.0], np.float32)
        chex.assert_trees_all_close(scores["per_class_iou"], per_class_iou, rtol=RTOL)
        chex.assert_trees_all_close(scores["per_class_fscore"], per_class_f, rtol=RTOL)
        chex.assert_trees_all_close(scores["miou"], np.float32(per_class_iou.mean()),
                                    rtol=RTOL)
        chex.assert_trees_all_close(scores["fscore"], np.float32(per_class_f.mean()),
                                    rtol=RTOL)
        only_a = segmentation.avsbench_batch_sums(pred, label, 4,
                                                  frame_weights=jnp.array([1.0, 0.0, 0.0]))
        np.testing.assert_array_equal(only_a[2], [1, 1, 1, 0])


class ContinualTest(absltest.TestCase):

    def test_three_tasks_by_hand(self):
        r = [[0.9, 0.1, np.nan],   # R[0, 2] is never read
             [0.95, 0.8, 0.2],
             [0.5, 0.85, 0.6]]
        got = continual.summarize(r)
        self.assertEqual(got["num_tasks"], 3)
        self.assertAlmostEqual(got["average_accuracy"], (0.5 + 0.85 + 0.6) / 3)
        self.assertAlmostEqual(got["learning_accuracy"], (0.9 + 0.8 + 0.6) / 3)
        # j=0: max(0.9, 0.95) - 0.5 = 0.45; j=1: 0.8 - 0.85 = -0.05.
        self.assertAlmostEqual(got["forgetting"], (0.45 - 0.05) / 2)
        # j=0: 0.5 - 0.9; j=1: 0.85 - 0.8.
        self.assertAlmostEqual(got["bwt"], (-0.4 + 0.05) / 2)
        self.assertAlmostEqual(got["fwt"], (0.1 + 0.2) / 2)

    def test_two_tasks_by_hand(self):
        got = continual.summarize([[0.8, 0.3], [0.6, 0.9]])
        self.assertAlmostEqual(got["forgetting"], 0.2)
        self.assertAlmostEqual(got["bwt"], -0.2)
        self.assertAlmostEqual(got["fwt"], 0.3)
        self.assertAlmostEqual(got["average_accuracy"], 0.75)

    def test_single_task_leaves_transfer_metrics_undefined(self):
        got = continual.summarize([[0.7]])
        self.assertAlmostEqual(got["average_accuracy"], 0.7)
        self.assertAlmostEqual(got["learning_accuracy"], 0.7)
        for key in ("forgetting", "bwt", "fwt"):
            self.assertNotIn(key, got)  # undefined: omitted, never 0 or NaN

    def test_forgetting_maxes_over_every_earlier_row_chaudhry(self):
        # Zero-shot scores R[j-1, j] defined (ATLAS evaluates task t+1 after task t).
        r = [[0.80, 0.30, None, None],
             [0.60, 0.90, 0.95, None],
             [0.70, 0.50, 0.85, 0.20],
             [0.40, 0.45, 0.60, 0.75]]
        got = continual.summarize(r)
        # AA = (0.40 + 0.45 + 0.60 + 0.75) / 4 = 2.20 / 4; LA = (0.80 + 0.90 + 0.85 + 0.75) / 4.
        self.assertAlmostEqual(got["average_accuracy"], 0.55)
        self.assertAlmostEqual(got["learning_accuracy"], 0.825)
        # max over l in 0..2 (spec_family §C4, Chaudhry): j=0: max(.80, .60, .70) - .40 = .40;
        # j=1: max(.30, .90, .50) - .45 = .45; j=2: max(-, .95, .85) - .60 = .35 (the zero-shot
        # row l=1 < j counts; the old l in [j, T-2] gave .85 - .60 = .25, mean 1.10 / 3).
        self.assertAlmostEqual(got["forgetting"], 1.20 / 3)
        # (.40 - .80) + (.45 - .90) + (.60 - .85) = -1.10.
        self.assertAlmostEqual(got["bwt"], -1.10 / 3)
        # R[0, 1] + R[1, 2] + R[2, 3] = .30 + .95 + .20 = 1.45.
        self.assertAlmostEqual(got["fwt"], 1.45 / 3)

    def test_undefined_entries_are_excluded_from_every_summary(self):
        # CAVS: nothing above the diagonal is evaluated; group 1 is absent from the last test.
        for undefined in (None, np.nan):
            r = [[0.9, undefined, undefined],
                 [0.7, 0.6, undefined],
                 [0.5, undefined, 0.4]]
            got = continual.summarize(r)
            self.assertEqual(set(got), {"num_tasks", "average_accuracy", "learning_accuracy",
                                        "forgetting", "bwt"})  # no fwt, not 0
            self.assertAlmostEqual(got["average_accuracy"], (0.5 + 0.4) / 2)
            self.assertAlmostEqual(got["learning_accuracy"], (0.9 + 0.6 + 0.4) / 3)
            # j=0: max(.9, .7) - .5 = .4; j=1: R[2, 1] undefined -> excluded.
            self.assertAlmostEqual(got["forgetting"], 0.4)
            self.assertAlmostEqual(got["bwt"], 0.5 - 0.9)

    def test_loop_writes_undefined_entries_as_null(self):
        from jax_cavs.core import loop  # pylint: disable=import-outside-toplevel
        from jax_cavs.core.scenario import Scenario  # pylint: disable=import-outside-toplevel
        owner = types.SimpleNamespace(
            strategy=types.SimpleNamespace(name="finetune"),
            problem=types.SimpleNamespace(name="cavs",
                                          evaluator=types.SimpleNamespace(headline="miou")),
            scenario=Scenario(name="2-1", mode="disjoint", subset="all", num_classes=4,
                              tasks=(), test_indices=np.zeros((0,), np.int64),
                              class_order=(1, 2, 3), report_groups=((1, 2), (3,))))
        meta = {"tasks": [], "accuracy_matrix": [[0.8, None], [0.6, 0.7]]}
        metrics = json.loads(json.dumps(loop.Experiment.metrics(owner, meta)))
        self.assertEqual(metrics["accuracy_matrix"], [[0.8, None], [0.6, 0.7]])
        self.assertNotIn("fwt", metrics["summary"])
        self.assertAlmostEqual(metrics["summary"]["forgetting"], 0.8 - 0.6)

    def test_non_square_matrix_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "square"):
            continual.summarize([[0.1, 0.2]])


if __name__ == "__main__":
    absltest.main()


def test_config_eval_absent_classes_reaches_the_evaluator(tiny_data_dir):
    """``--config.eval.absent_classes=zero``: the run's evaluator scores the CMR authors' way
    (finalize on frame B's matrix in the first classes: the first task's group averages 15/16
    with zeros, new = 0 instead of undefined)."""
    from jax_cavs.problems.cavs import config as config_base
    from jax_cavs.problems.cavs.problem import CAVSProblem

    config = config_base.base_config("finetune", config_base.parse_arg("runlocal"))
    config.dataset.data_dir = tiny_data_dir
    config.eval.absent_classes = "zero"
    problem = CAVSProblem.from_config(config)
    scenario = problem.scenario(joint=False)
    seen = scenario.seen_mask(scenario.num_tasks - 1)
    confusion = np.zeros((problem.num_classes,) * 2, np.int64)
    confusion[:3, :3] = CONFUSION_B
    first = scenario.group_mask(0)
    miou = problem.evaluator.finalize(confusion, scenario, seen)["record"]["miou"]
    assert miou["old"] == pytest.approx(15 / 16 / first.sum(), rel=RTOL)
    assert miou["new"] == 0.0
    config.eval.absent_classes = "none"
    with pytest.raises(ValueError, match="eval.absent_classes: 'none' is not one of"):
        CAVSProblem.from_config(config)
