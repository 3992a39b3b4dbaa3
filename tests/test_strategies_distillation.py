"""LwF, LwF-MC, ILT, MiB and PLOP strategies vs numpy transcriptions of the reference losses.

The strategies are exercised on hand-made model outputs (logits [N, T, H, W, K] and the
``AVSModel`` features dict) with a sequential class layout, so the numpy references slice
channels exactly as the PyTorch code does (``z[..., :C_o]``, ``z[..., :K_t]``): classes 0-2 are
old (background included), 3-4 the current task's, 5 is unseen and carries a junk logit that
must change nothing. Frame 1 of clip 1 is not annotated: it weighs 0 in the supervised terms
(``problem.weights(batch)``) but 1 in the distillation terms, which weigh every real frame
(``problem.weights(batch, labelled=False)``); clip 1 is a replayed one.

The gradient of a loss reaches a classifier column only through its logit channel (and the
2x2 average of the logits, ``logits_small``), so zero gradient on the unseen channels of both
means zero gradient on the unseen classifier rows.

Tolerances: float32 JAX vs float64 numpy over reductions of <= 512 terms with values O(1-40):
relative error ~1e-6, so rtol = 1e-5 with atol = 1e-6 (terms that are 0 on task 0 are exact).
"""

import functools
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

RTOL, ATOL = 1e-5, 1e-6
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


# -- numpy transcriptions of the reference losses (sequential class layout) ---------------
def _f64(x):
    return np.asarray(x, np.float64)


def _log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _logsumexp(x):
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


def _bce(x, t):
    return np.logaddexp(0.0, x) - x * t


def _pick(values, labels):
    """values[..., y] with 0 where y == 255."""
    safe = np.where(labels == 255, 0, labels)
    out = np.take_along_axis(values, safe[..., None], axis=-1)[..., 0]
    return np.where(labels == 255, 0.0, out)


def _frame_weights(batch, labelled=True):
    """[N, T]: the annotated frames of real clips (supervised terms), or with ``labelled=False``
    every real frame of real clips (distillation terms, which need no labels)."""
    frames = batch["label_mask"] if labelled else batch["frame_mask"]
    return _f64(frames * batch["valid"][:, None])


def _pixel_mean(loss_map, batch, labelled=True):
    w = _frame_weights(batch, labelled)[..., None, None]
    return (loss_map * w).sum() / (w.sum() * H * W)


def _ce(z, y, k=K_T):
    return -_pick(_log_softmax(_f64(z)[..., :k]), y)


def _kd(z, q, c_old=C_OLD):
    teacher = np.exp(_log_softmax(_f64(q)[..., :c_old]))
    return -(teacher * _log_softmax(_f64(z)[..., :c_old])).sum(-1) / c_old


def _unce(z, y):
    z = _f64(z)[..., :K_T]
    y = np.where((y < C_OLD), 0, y)
    log_p = z - _logsumexp(z)[..., None]
    log_p[..., 0] = _logsumexp(z[..., :C_OLD]) - _logsumexp(z)
    return -_pick(log_p, y)


def _unkd(z, q):
    z, t = _f64(z)[..., :K_T], np.exp(_log_softmax(_f64(q)[..., :C_OLD]))
    den = _logsumexp(z)
    log_bg = _logsumexp(z[..., [0] + list(range(C_OLD, K_T))]) - den
    log_fg = z[..., 1:C_OLD] - den[..., None]
    return -(t[..., 0] * log_bg + (t[..., 1:] * log_fg).sum(-1)) / C_OLD


def _multilabel_bce(z, y, k=K_T):
    onehot = (np.where(y == 255, -1, y)[..., None] == np.arange(k)).astype(np.float64)
    loss = _bce(_f64(z)[..., :k], onehot).sum(-1)
    return np.where(y == 255, 0.0, loss)


def _sigmoid_distillation(z, q):
    target = 1.0 / (1.0 + np.exp(-_f64(q)[..., :C_OLD]))
    return _bce(_f64(z)[..., :C_OLD], target).sum(-1)


def _feature_mse(a, b, batch):
    per_frame = ((_f64(b) - _f64(a)) ** 2).reshape(N * T, -1).mean(-1)
    w = _frame_weights(batch, labelled=False).reshape(-1)
    return (per_frame * w).sum() / w.sum()


def _plop_entropy(q):
    """PLOP's normalised entropy and pseudo-label of the teacher (spec §5.6(a))."""
    p = np.exp(_log_softmax(_f64(q)[..., :C_OLD]))
    ent = -(p * np.log(p + 1e-8)).mean(-1) / np.log(C_OLD)
    return ent / np.log(K_T), p.argmax(-1)


def _plop_pseudo_labels(y, q, thresholds, is_memory):
    u, pseudo = _plop_entropy(q)
    memory = np.asarray(is_memory)[:, None, None, None]
    background = np.where(memory, y == 0, y < C_OLD)
    valid = u < thresholds[pseudo]
    labels = np.where(background & valid, pseudo, np.where(background, 255, y))
    kappa = (background & valid).sum((-2, -1)) / (background.sum((-2, -1)) + 1e-6)
    return labels, kappa


def _local_pod(x, scales):
    """PLOP's ``_local_pod`` on an NCHW array, with the scales that fit the map."""
    b, _, _, w = x.shape
    parts = []
    for scale in [s for s in scales if s <= w]:
        k = w // scale
        for i in range(scale):
            for j in range(scale):
                tensor = x[..., i * k:(i + 1) * k, j * k:(j + 1) * k]
                parts.append(tensor.mean(axis=3).reshape(b, -1))
                parts.append(tensor.mean(axis=2).reshape(b, -1))
    return np.concatenate(parts, axis=1)


def _pod(teacher, student, batch, pre_logits="decoder", scales=(1, 2, 4)):
    def maps(o):
        extra = o.features["decoder"] if pre_logits == "decoder" else o.features["neck"][-1]
        return [*o.features["backbone"], extra]

    def nchw(x):
        return np.moveaxis(_f64(x), -1, 1)

    a_small = nchw(teacher.features["logits_small"])[:, :C_OLD]
    b_small = nchw(student.features["logits_small"])[:, :K_T]
    folded = b_small[:, :C_OLD].copy()
    folded[:, 0] = b_small[:, 0] + b_small[:, C_OLD:].sum(axis=1)
    pairs = [(nchw(a), nchw(b), 0.01) for a, b in zip(maps(teacher), maps(student))]
    pairs.append((a_small, folded, 0.0005))
    w = _frame_weights(batch, labelled=False).reshape(-1)
    schedule = np.sqrt(K_T / (K_T - C_OLD))
    layers = []
    for a, b, factor in pairs:
        diff = _local_pod(a ** 2, scales) - _local_pod(b ** 2, scales)
        distance = (np.linalg.norm(diff, axis=-1) * w).sum() / w.sum()
        layers.append(factor * schedule * distance)
    return sum(layers) / len(layers)


def _thresholds_halfway(teacher):
    """Per-class thresholds at the median entropy of each pseudo-class: about half of the
    background pixels are confident."""
    u, pseudo = _plop_entropy(teacher.logits)
    thresholds = np.full(K, 0.001, np.float32)
    for c in range(C_OLD):
        if (pseudo == c).any():
            thresholds[c] = np.median(u[pseudo == c])
    return thresholds


def _expected_task1(name, teacher, student, batch, thresholds):
    z, q, y = student.logits, teacher.logits, batch["labels"]
    # Supervised terms average over the annotated frames, distillation terms over every real
    # frame (``labelled=False``): frame 1 of clip 1 counts in the latter only.
    if name == "lwf":
        return (_pixel_mean(_ce(z, y), batch)
                + 100 * _pixel_mean(_kd(z, q), batch, labelled=False))
    if name == "ilt":
        return (_pixel_mean(_ce(z, y), batch)
                + 100 * _pixel_mean(_kd(z, q), batch, labelled=False)
                + 100 * _feature_mse(teacher.features["backbone"][-1],
                                     student.features["backbone"][-1], batch))
    if name == "lwf_mc":
        return (_pixel_mean(_multilabel_bce(z, y), batch)
                + 10 * _pixel_mean(_sigmoid_distillation(z, q), batch, labelled=False))
    if name == "mib":
        return (_pixel_mean(_unce(z, y), batch)
                + 10 * _pixel_mean(_unkd(z, q), batch, labelled=False))
    labels, kappa = _plop_pseudo_labels(y, q, thresholds, batch["is_memory"])
    ce = _pixel_mean(_ce(z, labels) * kappa[..., None, None], batch)
    return ce + _pod(teacher, student, batch)


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
class LossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_task0_is_plain_classification_whatever_the_teacher(self):
        batch = _batch(task=0)
        student = _outputs(1)
        zeros = jax.tree_util.tree_map(np.zeros_like, _outputs(2))  # train.py on task 0
        for name in NAMES:
            strategy, state = _state_for(name, 0)
            # The objective a run declares for reusing a trained first task is this loss.
            if name == "lwf_mc":
                self.assertEqual(strategy.first_task_objective, "bce")
                expected = _pixel_mean(_multilabel_bce(student.logits, batch["labels"], 3),
                                       batch)
            else:
                self.assertEqual(strategy.first_task_objective, "ce", name)
                expected = _pixel_mean(_ce(student.logits, batch["labels"], 3), batch)
            loss = self.variant(functools.partial(strategy.loss, rng=jax.random.key(0)))
            for teacher in (zeros, _outputs(3)):
                value, terms = loss(state, batch, student, teacher)
                chex.assert_trees_all_close(value, np.float32(expected), rtol=RTOL,
                                            atol=ATOL, custom_message=name)
                for term in set(terms) - {"ce", "bce", "unce"}:
                    self.assertEqual(float(terms[term]), 0.0, f"{name}: {term}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_task1_is_classification_plus_weighted_distillation(self):
        batch = _batch(task=1)
        teacher = _outputs(4)
        student = _student_of(teacher, 5)
        thresholds = _thresholds_halfway(teacher)
        for name in NAMES:
            strategy, state = _state_for(name, 1, thresholds)
            value, terms = self.variant(functools.partial(strategy.loss, rng=jax.random.key(0)))(
                state, batch, student, teacher)
            expected = _expected_task1(name, teacher, student, batch, thresholds)
            chex.assert_trees_all_close(value, np.float32(expected), rtol=RTOL, atol=ATOL,
                                        custom_message=name)
            self.assertGreater(min(float(v) for v in terms.values()), 0.0, name)

    def test_ilt_and_plop_feature_choices(self):
        batch = _batch(task=1)
        teacher = _outputs(6)
        student = _student_of(teacher, 7)
        ilt = _strategy("ilt", {"feature": "neck"})
        _, terms = ilt.loss(_state(1, ilt), batch, student, teacher, None)
        chex.assert_trees_all_close(terms["de"], np.float32(_feature_mse(
            teacher.features["neck"][-1], student.features["neck"][-1], batch)), rtol=RTOL)
        strategy = _strategy("plop", {"pod_pre_logits": "neck"})
        got = strategy.pod_distillation(_state(1, strategy), batch, student, teacher)
        chex.assert_trees_all_close(got, np.float32(_pod(teacher, student, batch, "neck")),
                                    rtol=RTOL)

    def test_unseen_classes_get_zero_gradient(self):
        teacher = _outputs(8)
        student = _student_of(teacher, 9)
        thresholds = _thresholds_halfway(teacher)
        for task in (0, 1):
            batch = _batch(task)
            unseen = ~TASK_MASKS[task]["seen"]
            for name in NAMES:
                strategy, state = _state_for(name, task, thresholds)
                grads = jax.jit(jax.grad(lambda s: strategy.loss(
                    state, batch, s, teacher, None)[0]))(student)
                for key, grad in (("logits", grads.logits),
                                  ("logits_small", grads.features["logits_small"])):
                    np.testing.assert_array_equal(np.asarray(grad)[..., unseen], 0.0,
                                                  err_msg=f"{name} task {task} {key}")
                self.assertGreater(float(jnp.abs(grads.logits[..., ~unseen]).sum()), 0.0)

    def test_distillation_counts_unlabelled_frames_and_ce_does_not(self):
        """One clip of two real frames (``frame_mask`` [1, 1]) of which only the first is
        annotated (``label_mask`` [1, 0], AVSBench v1s-like). The second carries task labels
        so that a CE counting it would differ. The supervised CE averages the pixels of the
        first frame only (``problem.weights(batch)``); LwF's KD and ILT's feature term average
        both frames (``problem.weights(batch, labelled=False)``), computed here in numpy."""
        rng = np.random.default_rng(12)
        z = (rng.normal(size=(1, 2, H, W, K)) * 2.0).astype(np.float32)
        q = (rng.normal(size=(1, 2, H, W, K)) * 2.0).astype(np.float32)
        f_old = rng.normal(size=(2, 1, 1, 5)).astype(np.float32)   # [N*T, h, w, c]
        f_new = rng.normal(size=(2, 1, 1, 5)).astype(np.float32)
        batch = {"labels": rng.choice((0, 3, 4), size=(1, 2, H, W)).astype(np.int32),
                 "label_mask": np.array([[1, 0]], np.float32),
                 "frame_mask": np.array([[1, 1]], np.float32),
                 "valid": np.ones((1,), np.float32), "is_memory": np.array([False])}
        student = base.Outputs(z, {"backbone": (f_new,)})
        teacher = base.Outputs(q, {"backbone": (f_old,)})

        # CE over the 5 seen classes at every pixel of the first frame; KD over the 3 old classes,
        # -(1/3) sum_c p_teacher,c log p_student,c, at every pixel of both frames.
        zf, qf, y = _f64(z)[0], _f64(q)[0], batch["labels"][0]
        log_p = zf[..., :K_T] - np.log(np.exp(zf[..., :K_T]).sum(-1, keepdims=True))
        ce_map = -np.take_along_axis(log_p, y[..., None], -1)[..., 0]     # [2, H, W]
        ce = ce_map[0].mean()
        teacher_p = np.exp(qf[..., :C_OLD]) / np.exp(qf[..., :C_OLD]).sum(-1, keepdims=True)
        log_s = zf[..., :C_OLD] - np.log(np.exp(zf[..., :C_OLD]).sum(-1, keepdims=True))
        kd_map = -(teacher_p * log_s).sum(-1) / C_OLD                        # [2, H, W]
        kd = kd_map.mean()
        de = ((_f64(f_new) - _f64(f_old)) ** 2).reshape(2, -1).mean(-1).mean()
        # The frame weights decide: over both frames CE differs, over the first KD and DE do.
        self.assertGreater(abs(ce_map.mean() - ce), 1e-2 * ce)
        self.assertGreater(abs(kd_map[0].mean() - kd), 1e-2 * kd)
        self.assertGreater(abs(((_f64(f_new) - _f64(f_old)) ** 2)[0].mean() - de), 1e-2 * de)

        for name in ("lwf", "ilt"):
            strategy, state = _state_for(name, 1)
            value, terms = jax.jit(functools.partial(strategy.loss, rng=None))(
                state, batch, student, teacher)
            chex.assert_trees_all_close(terms["ce"], np.float32(ce), rtol=RTOL, atol=ATOL,
                                        custom_message=name)
            chex.assert_trees_all_close(terms["kd"], np.float32(kd), rtol=RTOL, atol=ATOL,
                                        custom_message=name)
            expected = ce + 100 * kd
            if name == "ilt":
                chex.assert_trees_all_close(terms["de"], np.float32(de), rtol=RTOL, atol=ATOL)
                expected += 100 * de
            chex.assert_trees_all_close(value, np.float32(expected), rtol=RTOL, atol=ATOL,
                                        custom_message=name)


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
