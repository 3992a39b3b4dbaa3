"""The CMR strategy's glue (config fields, memory capacity and replay slots, pseudo-labels of
replayed clips, the collision record), its config file, and the jit'd MSS and collision passes
over padded batches with a stub model. Tolerances: test_cmr.py's doc.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jax_cavs.data import audio as audio_lib
from jax_cavs.problems.cavs import collision
from jax_cavs.problems.cavs import mss
from jax_cavs.problems.cavs.problem import CAVSProblem
from jax_cavs.core.memory import ReplayMemory
from test_cmr import RTOL_F32
from test_cmr_collisions import OLD, PAIRS, PER_FRAME


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
            extras={"thresholds": np.full(3, 0.1, np.float32)}, task=np.int32(1),
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
        # The authors' "overwrite": where the teacher is unsure (uniform logits: PLOP's
        # normalised entropy ln 2 / 2 / ln 2 / ln 3 = 0.455, above the threshold 0.1) the
        # replayed clip's old class 1 becomes 255;
        # the default keeps it. The new class 2 is never relabelled.
        logits[1, 0, 0, 0] = 0.0
        teacher = Outputs(logits, {})
        relabelled, kappa = CMR(memory_pseudo_labels="overwrite").relabel_background(
            state, batch, teacher)
        np.testing.assert_array_equal(relabelled[1], [[[255, 1], [1, 2]]])
        chex.assert_trees_all_close(np.asarray(kappa)[1], np.full(1, 2 / 3, np.float32),
                                    rtol=1e-6)  # 2 confident of 3 relabelled pixels
        relabelled, _ = CMR().relabel_background(state, batch, teacher)
        np.testing.assert_array_equal(relabelled[1], labels[1] + np.array([[[0, 1], [1, 0]]]))

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

SILENCE = float(audio_lib.silent_log_mel(1)[0, 0, 0])  # log(0.01), the log-mel of silence


class _StubModel:
    """Stands in for ``AVSModel`` inside ``CAVSProblem.apply``: one-hot logits of class
    ``frames[..., 0]``, or of ``frames[..., 1]`` on frames whose audio is louder than silence
    (dropped audio is silence, ``CAVSProblem.apply``)."""

    num_classes = 4

    @staticmethod
    def apply(variables, frames, audio, frame_mask, train=False):
        heard = jnp.any(audio > SILENCE, axis=(-2, -1))[..., None, None]
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
               "audio": np.where(audio_on[rows][:, :, None, None], 1.0, SILENCE) * np.ones(
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
        ids, per_frame, pairs, clip_pairs = collision.old_model_collisions(
            CAVSProblem(_StubModel()), *self.params, old, current,
            _stub_batches(self.frames, self.labels, self.audio_on), lambda batch: batch,
            with_clip_pairs=True)
        # The old model's argmax over {0, 1}: class 1 where the one-hot class is 1, else 0.
        av_class = np.where(self.audio_on[..., None, None], self.audio_class, self.visual)
        pred = np.where(av_class == 1, 1, 0)
        expected, expected_pairs = collision.collision_counts(
            pred, self.labels, old, current, np.ones((3, 2)), 4)
        np.testing.assert_array_equal(ids, [100, 101, 102])
        np.testing.assert_array_equal(per_frame, expected)
        np.testing.assert_array_equal(pairs, expected_pairs)
        self.assertGreater(per_frame.sum(), 0)
        np.testing.assert_array_equal(clip_pairs, collision.clip_pair_counts(
            pred, self.labels, old, current, np.ones((3, 2)), 4))
        np.testing.assert_array_equal(clip_pairs.sum(axis=0).reshape(4, 4), pairs)
