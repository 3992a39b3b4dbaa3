"""The losses of LwF, LwF-MC, ILT, MiB and PLOP vs numpy transcriptions of the reference losses,
on the hand-made model outputs, batches and class layout of test_strategies_distillation.py
(its doc).

The gradient of a loss reaches a classifier column only through its logit channel (and the
2x2 average of the logits, ``logits_small``), so zero gradient on the unseen channels of both
means zero gradient on the unseen classifier rows.

Tolerances: float32 JAX vs float64 numpy over reductions of <= 512 terms with values O(1-40):
relative error ~1e-6, so rtol = 1e-5 with atol = 1e-6 (terms that are 0 on task 0 are exact).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jax_cavs.core import strategy as base
from test_pod import _reference_local_pod
from test_strategies_distillation import (C_OLD, H, K, K_T, N, NAMES, TASK_MASKS, T, W, _batch,
                                          _f64, _log_softmax, _outputs, _plop_entropy, _state,
                                          _state_for, _strategy, _student_of,
                                          _thresholds_halfway)

RTOL, ATOL = 1e-5, 1e-6


# -- numpy transcriptions of the reference losses (sequential class layout) ---------------
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
    return _reference_local_pod(x, [scale for scale in scales if scale <= x.shape[-1]])


def _pod(teacher, student, batch, pre_logits="decoder", scales=(1, 2, 4), stages="backbone",
         logits="small", schedule=True):
    def maps(o):
        extra = o.features["decoder"] if pre_logits == "decoder" else o.features["neck"][-1]
        return [*o.features[stages], extra]

    def nchw(x):
        return np.moveaxis(_f64(x), -1, 1)

    def logits_of(o):
        if logits == "small":
            return o.features["logits_small"]
        return np.reshape(o.logits, (-1, *np.shape(o.logits)[2:]))

    a_small = nchw(logits_of(teacher))[:, :C_OLD]
    b_small = nchw(logits_of(student))[:, :K_T]
    folded = b_small[:, :C_OLD].copy()
    folded[:, 0] = b_small[:, 0] + b_small[:, C_OLD:].sum(axis=1)
    pairs = [(nchw(a), nchw(b), 0.01) for a, b in zip(maps(teacher), maps(student))]
    pairs.append((a_small, folded, 0.0005))
    w = _frame_weights(batch, labelled=False).reshape(-1)
    schedule = np.sqrt(K_T / (K_T - C_OLD)) if schedule else 1.0
    layers = []
    for a, b, factor in pairs:
        diff = _local_pod(a ** 2, scales) - _local_pod(b ** 2, scales)
        distance = (np.linalg.norm(diff, axis=-1) * w).sum() / w.sum()
        layers.append(factor * schedule * distance)
    return sum(layers) / len(layers)



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
        # The CMR authors' maps (avss/train.py:622-631, POD schedule off: config.py:99-100):
        # the 4 neck maps, the decoder output and the full-resolution logits.
        authors = _strategy("plop", {"pod_stages": "neck", "pod_logits": "full",
                                     "pod_schedule": False})
        got = authors.pod_distillation(_state(1, authors), batch, student, teacher)
        chex.assert_trees_all_close(got, np.float32(_pod(
            teacher, student, batch, stages="neck", logits="full", schedule=False)), rtol=RTOL)
        self.assertNotAlmostEqual(float(got), float(strategy.pod_distillation(
            _state(1, strategy), batch, student, teacher)), places=6)

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


if __name__ == "__main__":
    absltest.main()
