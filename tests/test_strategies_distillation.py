"""LwF, LwF-MC, ILT, MiB and PLOP strategies: PLOP's pseudo-labels and thresholds, MiB / PLOP's
classifier initialisation at a task's start, the registry and the configs' defaults; and the
shared inputs of test_strategies_distillation_losses.py, which compares the losses with numpy
transcriptions of the reference losses.

The strategies are exercised on hand-made model outputs (logits [N, T, H, W, K] and the
``AVSModel`` features dict) with a sequential class layout, so the numpy references slice
channels exactly as the PyTorch code does (``z[..., :C_o]``, ``z[..., :K_t]``): classes 0-2 are
old (background included), 3-4 the current task's, 5 is unseen and carries a junk logit that
must change nothing. Frame 1 of clip 1 is not annotated: it weighs 0 in the supervised terms
(``problem.weights(batch)``) but 1 in the distillation terms, which weigh every real frame
(``problem.weights(batch, labelled=False)``); clip 1 is a replayed one.
"""

import importlib.util
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from jax_cavs.problems.cavs import strategies
from jax_cavs.problems.cavs.model import AVSModel
from jax_cavs.problems.cavs.problem import CAVSProblem
from jax_cavs.problems.cavs.losses import pseudo_labels
from jax_cavs.core.state import create_state
from jax_cavs.core import strategy as base
from jax_cavs.problems.cavs.strategies import plop

K, C_OLD, K_T = 6, 3, 5
N, T, H, W = 2, 2, 8, 8
# (side, channels) of the 4 backbone stages as for a 32 px input, then the decoder map.
STAGES = ((8, 2), (4, 3), (2, 4), (1, 5))
DECODER = (4, 3)
NAMES = ("lwf", "lwf_mc", "ilt", "mib", "plop")
CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
# The strategies ask the problem for the supervised loss and the element weights; those need
# no dataset and never run the model (``CAVSProblem(model)``), which is never initialised here.
PROBLEM = CAVSProblem(AVSModel(num_classes=K))


def _mask(*classes):
    return np.isin(np.arange(K), classes)


# Task 0 learns classes 1-2; task 1 learns 3-4 (class 5 belongs to a later task).
TASK_MASKS = {0: dict(seen=_mask(0, 1, 2), old=_mask(0), current=_mask(1, 2)),
              1: dict(seen=_mask(0, 1, 2, 3, 4), old=_mask(0, 1, 2), current=_mask(3, 4))}


# -- inputs -------------------------------------------------------------------------------
def _avg_pool2(logits):
    x = logits.reshape(N * T, H // 2, 2, W // 2, 2, K)
    return x.mean(axis=(2, 4)).astype(np.float32)


def _outputs(seed, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(N, T, H, W, K)) * scale).astype(np.float32)
    logits[..., 5] = 40.0  # unseen
    features = {
        "backbone": tuple(rng.normal(size=(N * T, s, s, c)).astype(np.float32)
                          for s, c in STAGES),
        "neck": tuple(rng.normal(size=(N * T, s, s, 3)).astype(np.float32)
                      for s, _ in STAGES),
        "decoder": rng.normal(size=(N * T, DECODER[0], DECODER[0], DECODER[1])
                              ).astype(np.float32),
        "logits_small": _avg_pool2(logits),
    }
    return base.Outputs(logits, features)


def _student_of(teacher, seed):
    """A student near the teacher (distillation terms of a realistic size)."""
    rng = np.random.default_rng(seed)
    noisy = jax.tree_util.tree_map(
        lambda x: (x + 0.5 * rng.normal(size=x.shape)).astype(np.float32), teacher)
    logits = noisy.logits.copy()
    logits[..., 5] = -30.0
    return base.Outputs(logits, {**noisy.features, "logits_small": _avg_pool2(logits)})


def _batch(task, seed=0):
    rng = np.random.default_rng(seed)
    new_classes = (0, 3, 4) if task else (0, 1, 2)
    labels = rng.choice(new_classes, size=(N, T, H, W)).astype(np.int32)
    labels[0, 0, 0, :3] = 255
    if task:  # clip 1 is replayed: true old labels on part of it
        labels[1, 0, :4] = rng.choice((0, 1, 2, 3), size=(4, W))
    labels[1, 1] = 255  # not annotated
    return {"labels": labels,
            "label_mask": np.array([[1, 1], [1, 0]], np.float32),
            "frame_mask": np.ones((N, T), np.float32),
            "valid": np.ones((N,), np.float32),
            "is_memory": np.array([False, task > 0])}


def _params(seed=0, channels=4):
    rng = np.random.default_rng(seed)
    return {"decoder": {
        "output_conv_4": {"kernel": rng.normal(size=(1, 1, channels, K)).astype(np.float32),
                          "bias": rng.normal(size=(K,)).astype(np.float32)},
        "output_conv_2": {"kernel": rng.normal(size=(3, 3, 2, channels)).astype(np.float32)}},
        "backbone": {"scale": rng.normal(size=(3,)).astype(np.float32)}}


def _state(task, strategy, params=None):
    state = create_state({"params": _params() if params is None else params},
                         optax.sgd(0.1), K, 0, False, strategy.init_extras(K))
    masks = {k: jnp.asarray(v) for k, v in TASK_MASKS[task].items()}
    return state.replace(task=jnp.asarray(task, jnp.int32), **masks)


def _task_info(index):
    m = TASK_MASKS[index]
    return base.TaskInfo(index=index, num_tasks=3, classes=tuple(np.flatnonzero(m["current"])),
                         current=m["current"], old=m["old"], seen=m["seen"])


# -- numpy helpers shared with test_strategies_distillation_losses.py -----------------------
def _f64(x):
    return np.asarray(x, np.float64)


def _log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _plop_entropy(q):
    """PLOP's normalised entropy and pseudo-label of the teacher (spec §5.6(a))."""
    p = np.exp(_log_softmax(_f64(q)[..., :C_OLD]))
    ent = -(p * np.log(p + 1e-8)).mean(-1) / np.log(C_OLD)
    return ent / np.log(K_T), p.argmax(-1)


def _thresholds_halfway(teacher):
    """Per-class thresholds at the median entropy of each pseudo-class: about half of the
    background pixels are confident."""
    u, pseudo = _plop_entropy(teacher.logits)
    thresholds = np.full(K, 0.001, np.float32)
    for c in range(C_OLD):
        if (pseudo == c).any():
            thresholds[c] = np.median(u[pseudo == c])
    return thresholds


def _strategy(name, hparams=None):
    """The strategy ``name`` bound to the CAVS problem, as ``core.loop`` builds it."""
    return strategies.get_strategy(name, hparams, PROBLEM)


def _state_for(name, task, thresholds=None):
    strategy = _strategy(name)
    state = _state(task, strategy)
    if thresholds is not None:
        state = state.replace(extras={**state.extras, "thresholds": jnp.asarray(thresholds)})
    return strategy, state


# -- tests --------------------------------------------------------------------------------
class PseudoLabelTest(absltest.TestCase):

    def test_memory_clips_keep_their_true_old_labels(self):
        batch = _batch(task=1)
        teacher = _outputs(10)
        strategy, state = _state_for("plop", 1, np.ones(K, np.float32))  # all confident
        labels, kappa = strategy.relabel_background(state, batch, teacher)
        labels = np.asarray(labels)
        y = batch["labels"]
        _, pseudo = _plop_entropy(teacher.logits)
        old_pixels = (y[1] == 1) | (y[1] == 2)
        self.assertTrue(np.any(pseudo[1][old_pixels] != y[1][old_pixels]))  # PLOP would change them
        np.testing.assert_array_equal(labels[1][old_pixels], y[1][old_pixels])
        np.testing.assert_array_equal(labels[y == 0], pseudo[y == 0])  # every bg pixel relabelled
        np.testing.assert_array_equal(labels[y >= 3], y[y >= 3])
        np.testing.assert_allclose(np.asarray(kappa)[:, 0], 1.0, rtol=1e-5)

    def test_adaptive_factor_off_leaves_kappa_one(self):
        batch = _batch(task=1)
        teacher = _outputs(11)
        strategy = _strategy("plop", {"adaptive_factor": False})
        state = _state(1, strategy).replace(extras={"thresholds": jnp.asarray(
            _thresholds_halfway(teacher))})
        _, kappa = strategy.relabel_background(state, batch, teacher)
        np.testing.assert_array_equal(np.asarray(kappa), 1.0)


class BeginTaskTest(absltest.TestCase):

    def test_init_balanced_changes_exactly_the_current_rows_and_bg_bias(self):
        params = _params(3)
        kernel = params["decoder"]["output_conv_4"]["kernel"]
        bias = params["decoder"]["output_conv_4"]["bias"]
        for name in ("mib", "plop"):
            strategy = _strategy(name)
            state = strategy.begin_task(_state(0, strategy, params), _task_info(1))
            head = state.params["decoder"]["output_conv_4"]
            expected_kernel = kernel.copy()
            expected_kernel[..., 3:5] = kernel[..., :1]
            expected_bias = bias.copy()
            expected_bias[[0, 3, 4]] = bias[0] - np.log(2 + 1)
            np.testing.assert_array_equal(np.asarray(head["kernel"]), expected_kernel)
            chex.assert_trees_all_close(head["bias"], expected_bias, rtol=1e-6)
            others = {"backbone": state.params["backbone"],
                      "conv": state.params["decoder"]["output_conv_2"]}
            chex.assert_trees_all_equal(others, {"backbone": params["backbone"],
                                                 "conv": params["decoder"]["output_conv_2"]})
            chex.assert_trees_all_equal(state.old_params, params)  # the teacher is untouched
            self.assertEqual(int(state.task), 1)
            np.testing.assert_array_equal(np.asarray(state.current), TASK_MASKS[1]["current"])

    def test_no_init_on_task0_or_when_disabled(self):
        params = _params(4)
        for name, hparams, index in (("mib", {}, 0), ("plop", {}, 0),
                                     ("mib", {"init_balanced": False}, 1),
                                     ("plop", {"init_balanced": False}, 1),
                                     ("lwf", {}, 1)):
            strategy = _strategy(name, hparams)
            state = strategy.begin_task(_state(0, strategy, params), _task_info(index))
            chex.assert_trees_all_equal(state.params, params)


class PrepareTaskTest(absltest.TestCase):
    """PLOP's thresholds from a fake task context whose "model" is a per-pixel linear map of
    the frames by the classifier kernel (so teacher and student differ by init_balanced)."""

    @staticmethod
    def _forward(params, batch_stats, batch):
        head = params["decoder"]["output_conv_4"]
        logits = jnp.einsum("ntijc,ck->ntijk", jnp.asarray(batch["frames"]),
                            head["kernel"][0, 0]) + head["bias"]
        return base.Outputs(logits, {})

    @staticmethod
    def _host_batches(seed):
        rng = np.random.default_rng(seed)
        batches = []
        for i in range(3):
            labels = rng.choice((0, 0, 3, 4, 255), size=(2, T, H, W)).astype(np.int32)
            label_mask = np.ones((2, T), np.float32)
            label_mask[1, i % T] = 0
            batches.append({"frames": rng.normal(size=(2, T, H, W, 4)).astype(np.float32),
                            "labels": labels, "label_mask": label_mask,
                            "valid": np.array([1.0, 0.0 if i == 2 else 1.0], np.float32)})
        return batches

    def _numpy_histogram(self, params, batches):
        head = params["decoder"]["output_conv_4"]
        histogram = np.zeros((K, pseudo_labels.NUM_BINS), np.int64)
        for batch in batches:
            q = np.einsum("ntijc,ck->ntijk", _f64(batch["frames"]),
                          _f64(head["kernel"][0, 0])) + _f64(head["bias"])
            u, pseudo = _plop_entropy(q)
            weights = (batch["label_mask"] * batch["valid"][:, None])[..., None, None]
            counted = (batch["labels"] == 0) & (np.broadcast_to(weights, u.shape) > 0)
            bins = np.minimum(np.floor(u * 100).astype(int), 99)
            np.add.at(histogram, (pseudo[counted], bins[counted]), 1)
        return histogram

    def test_thresholds_are_the_median_of_the_teacher_histogram_on_task_data(self):
        params = _params(5)
        batches = self._host_batches(6)
        calls = []

        def task_batches(indices, labels="current"):
            calls.append((list(indices), labels))
            return iter(batches)

        strategy = _strategy("plop")
        state = strategy.begin_task(_state(0, strategy, params), _task_info(1))
        ctx = base.TaskContext(
            task=_task_info(1), train_indices=np.array([4, 7, 9]), batches=task_batches,
            device_batch=lambda b: {k: jnp.asarray(v) for k, v in b.items()},
            forward=jax.jit(self._forward), problem=PROBLEM, workdir="",
            rng=np.random.default_rng(0))
        state = strategy.prepare_task(state, ctx)

        histogram = self._numpy_histogram(params, batches)  # the teacher = params before init
        self.assertGreater(np.count_nonzero(histogram.sum(0)), 3)  # several bins in use
        self.assertEqual(calls, [([4, 7, 9], "current")])
        np.testing.assert_array_equal(
            np.asarray(state.extras["thresholds"]), pseudo_labels.median_thresholds(histogram))
        # Several batches sum to the histogram of all their pixels, in int64.
        two = plop.entropy_histogram(iter(batches + batches), ctx.forward, params, None,
                                     ctx.device_batch, TASK_MASKS[1]["old"],
                                     TASK_MASKS[1]["seen"])
        self.assertEqual(two.dtype, np.int64)
        np.testing.assert_array_equal(two, 2 * histogram)

    def test_task0_keeps_the_base_thresholds(self):
        strategy = _strategy("plop")
        state = _state(0, strategy)
        ctx = base.TaskContext(task=_task_info(0), train_indices=np.array([0]), batches=None,
                               device_batch=None, forward=None, problem=PROBLEM, workdir="",
                               rng=np.random.default_rng(0))
        state = strategy.prepare_task(state, ctx)
        np.testing.assert_array_equal(np.asarray(state.extras["thresholds"]), np.float32(0.001))


class RegistryAndConfigTest(absltest.TestCase):

    def test_registry_finds_every_name_and_configs_hold_the_defaults(self):
        self.assertTrue(set(NAMES) <= set(strategies.available()))
        for name in NAMES:
            spec = importlib.util.spec_from_file_location(
                f"config_{name}", os.path.join(CONFIG_DIR, f"{name}.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            config = module.get_config("runlocal")
            self.assertEqual(config.strategy.name, name)
            hparams = {k: v for k, v in config.strategy.items() if k != "name"}
            strategy = strategies.get_strategy(name, hparams)
            self.assertEqual(strategy, type(strategy)())  # the config records the defaults
            self.assertTrue(strategy.uses_teacher)
            hash(strategy)  # the experiment keys its jit'd steps by strategy

    def test_paper_defaults(self):
        get = strategies.get_strategy
        self.assertEqual((get("lwf").loss_kd, get("lwf").alpha), (100.0, 1.0))
        self.assertEqual((get("ilt").loss_kd, get("ilt").loss_de), (100.0, 100.0))
        self.assertEqual(get("lwf_mc").icarl_importance, 10.0)
        self.assertEqual((get("mib").loss_kd, get("mib").init_balanced), (10.0, True))
        p = get("plop")
        self.assertEqual((p.pod_factor, p.pod_logits_factor, p.pseudo_threshold, p.pod_scales),
                         (0.01, 0.0005, 0.001, (1, 2, 4)))

    def test_bad_choices_name_the_config_field(self):
        with self.assertRaisesRegex(ValueError, "strategy.feature"):
            strategies.get_strategy("ilt", {"feature": "head"})
        with self.assertRaisesRegex(ValueError, "strategy.pod_pre_logits"):
            strategies.get_strategy("plop", {"pod_pre_logits": "aspp"})
        with self.assertRaisesRegex(ValueError, "strategy.pod_scales"):
            strategies.get_strategy("plop", {"pod_scales": (0, 2)})
        self.assertEqual(strategies.get_strategy("plop", {"pod_scales": [1, 2]}).pod_scales,
                         (1, 2))


if __name__ == "__main__":
    absltest.main()
