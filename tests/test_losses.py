"""Loss terms vs numpy transcriptions of the PyTorch reference code (spec_cavs §3.5, §4, §5).

The references below slice channels exactly as PLOP/MiB do (``z[:, :C_o]``, ``z[:, :K_t]``)
on a sequential class layout, while the JAX code uses class masks over all K channels; the
unseen channel carries a large junk logit that must not matter.

Tolerances: the JAX terms run in float32 (eps 1.2e-7) over at most 6 channels and a few
dozen pixels; each value goes through ~10 rounding steps, so relative errors stay below
~1e-6. rtol=1e-5 / atol=1e-6 leave a 10x margin; the numpy references run in float64.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest
from flax import linen as nn

from jax_cavs.cl import distillation
from jax_cavs.cl import reduce
from jax_cavs.cl.strategies.finetune import Finetune
from jax_cavs.core import optim, steps
from jax_cavs.core.state import create_state
from jax_cavs.problems.cavs.problem import CAVSProblem
from jax_cavs.problems.cavs.losses import segmentation

RTOL, ATOL = 1e-5, 1e-6
K, C_OLD, K_T = 6, 3, 5  # classes 0..2 old (incl. bg), 3..4 current, 5 unseen
SEEN = np.array([1, 1, 1, 1, 1, 0], bool)
OLD = np.array([1, 1, 1, 0, 0, 0], bool)
CURRENT = SEEN & ~OLD


def _logits(seed, shape=(2, 3, 3, K)):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=shape).astype(np.float32) * 2
    z[..., 5] = 50.0  # an unseen class with a huge logit must change nothing
    return z


def _labels():
    y = np.array([[[0, 3, 4], [1, 255, 2], [0, 0, 4]],
                  [[2, 2, 3], [0, 255, 0], [1, 4, 0]]], np.int32)
    return y


def _nchw(x):
    return np.moveaxis(x.astype(np.float64), -1, 1)


def _log_softmax(x, axis=1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _logsumexp(x, axis=1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _nll(log_probs, labels):
    """torch nll_loss(reduction='none', ignore_index=255) on [B, C, H, W]."""
    out = np.zeros(labels.shape)
    for idx in np.ndindex(labels.shape):
        if labels[idx] != 255:
            b, h, w = idx
            out[idx] = -log_probs[b, labels[idx], h, w]
    return out


def _bce(x, t):
    """torch binary_cross_entropy_with_logits, written with log-sigmoids."""
    return -(t * np.log(1 / (1 + np.exp(-x))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-x))))


class ReduceTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_mean_counts_ignored_pixels_and_drops_masked_frames(self):
        loss = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
        mask = np.array([[1, 0], [0, 1]], np.float32)[..., None, None]
        expected = (loss[0, 0].sum() + loss[1, 1].sum()) / 18.0
        got = self.variant(reduce.masked_mean)(loss, mask)
        chex.assert_trees_all_close(got, np.float32(expected), rtol=RTOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_mean_of_empty_mask_is_zero_with_finite_gradient(self):
        loss = jnp.ones((2, 3, 3))
        mask = jnp.zeros((2, 1, 1))
        value, grad = self.variant(jax.value_and_grad(reduce.masked_mean))(loss, mask)
        self.assertEqual(float(value), 0.0)
        chex.assert_tree_all_finite(grad)


class SegmentationLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_cross_entropy_matches_ce_on_first_kt_channels(self):
        z, y = _logits(0), _labels()
        expected = _nll(_log_softmax(_nchw(z)[:, :K_T]), y)
        got = self.variant(segmentation.masked_cross_entropy)(z, y, SEEN)
        chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=RTOL, atol=ATOL)
        self.assertEqual(float(got[0, 1, 1]), 0.0)  # ignored pixel

    @chex.variants(with_jit=True, without_jit=True)
    def test_multilabel_bce_matches_bce_with_ignore_index(self):
        z, y = _logits(1), _labels()
        x = _nchw(z)[:, :K_T]
        onehot = np.moveaxis(np.eye(K_T + 1)[np.where(y == 255, K_T, y)][..., :K_T], -1, 1)
        expected = _bce(x, onehot).sum(axis=1) * onehot.sum(axis=1)
        got = self.variant(segmentation.multilabel_bce)(z, y, SEEN)
        chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=RTOL, atol=ATOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_unbiased_cross_entropy_matches_mib_background_aggregation(self):
        z, y = _logits(2), _labels()
        x = _nchw(z)[:, :K_T]
        # MiB UnbiasedCrossEntropy.forward, literally.
        outputs = np.zeros_like(x)
        den = _logsumexp(x)
        outputs[:, 0] = _logsumexp(x[:, :C_OLD]) - den
        outputs[:, C_OLD:] = x[:, C_OLD:] - den[:, None]
        labels = np.where(y < C_OLD, 0, y)
        expected = _nll(outputs, labels)
        got = self.variant(segmentation.unbiased_cross_entropy)(z, y, SEEN, OLD)
        chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=RTOL, atol=ATOL)

    def test_unseen_classes_get_exactly_zero_gradient(self):
        z, y = jnp.asarray(_logits(3)), jnp.asarray(_labels())
        q = jnp.asarray(_logits(4))
        terms = {
            "ce": lambda z: segmentation.masked_cross_entropy(z, y, SEEN),
            "bce": lambda z: segmentation.multilabel_bce(z, y, SEEN),
            "unce": lambda z: segmentation.unbiased_cross_entropy(z, y, SEEN, OLD),
            "kd": lambda z: distillation.knowledge_distillation(z, q, OLD),
            "unkd": lambda z: distillation.unbiased_knowledge_distillation(z, q, SEEN, OLD),
            "icarl": lambda z: distillation.sigmoid_distillation(z, q, OLD),
        }
        for name, term in terms.items():
            grad = jax.grad(lambda z: jnp.sum(term(z)))(z)
            chex.assert_tree_all_finite(grad)
            np.testing.assert_array_equal(np.asarray(grad[..., ~SEEN]), 0.0, err_msg=name)
            self.assertGreater(float(jnp.abs(grad[..., SEEN]).sum()), 0.0, msg=name)

    def test_label_of_unseen_class_contributes_nothing(self):
        z = jnp.asarray(_logits(5))
        y = jnp.full((2, 3, 3), 5, jnp.int32)
        for loss in (segmentation.masked_cross_entropy(z, y, SEEN),
                     segmentation.unbiased_cross_entropy(z, y, SEEN, OLD),
                     segmentation.multilabel_bce(z, y, SEEN)):
            np.testing.assert_array_equal(np.asarray(loss), 0.0)

    def test_adaptive_avg_pool_matrix_matches_pytorch_bins(self):
        # AdaptiveAvgPool 5 -> 3: windows [0, 2), [1, 4), [3, 5).
        expected = np.array([[1 / 2, 1 / 2, 0, 0, 0],
                             [0, 1 / 3, 1 / 3, 1 / 3, 0],
                             [0, 0, 0, 1 / 2, 1 / 2]], np.float32)
        np.testing.assert_allclose(segmentation.adaptive_avg_pool_matrix(5, 3), expected)

    @chex.variants(with_jit=True, without_jit=True)
    def test_avm_kl_loss_matches_masked_audio_visual_kl(self):
        rng = np.random.default_rng(6)
        logits = np.zeros((2, 4, 4, K), np.float32)
        logits[..., 0] = 1.0
        logits[0, :2, :2, 2] = 5.0   # frame 0: an object in the top-left 2x2 block
        logits[1, :, :, 5] = 9.0     # frame 1: an unseen class wins the raw argmax only
        audio = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(2)]
        visual = [rng.normal(size=(2, 2, 2, 3)).astype(np.float32),
                  rng.normal(size=(2, 1, 1, 3)).astype(np.float32)]
        weights = np.array([1.0, 1.0], np.float32)

        # Pooled object masks by hand: frame 0 -> [[1, 0], [0, 0]] at 2x2, 4/16 at 1x1;
        # frame 1 is background over the seen classes -> 0.
        masks = [np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], np.float64),
                 np.array([[[0.25]], [[0.0]]])]
        stage_losses = []
        for a, v, m in zip(audio, visual, masks):
            vbar = (np.maximum(v, 0) * m[..., None]).mean(axis=(1, 2))
            log_a, log_v = _log_softmax(a, axis=-1), _log_softmax(vbar, axis=-1)
            kl = (np.exp(log_a) * (log_a - log_v)).sum(-1)
            stage_losses.append((kl * weights).sum() / weights.sum())
        expected = np.mean(stage_losses)
        got = self.variant(segmentation.avm_kl_loss)(logits, audio, visual, weights, SEEN)
        chex.assert_trees_all_close(got, np.float32(expected), rtol=RTOL, atol=ATOL)


class DistillationTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_knowledge_distillation_matches_lwf_reference(self):
        z, q = _logits(7), _logits(8)
        alpha = 2.0
        outputs = _log_softmax(_nchw(z)[:, :C_OLD])
        labels = np.exp(_log_softmax(alpha * _nchw(q)[:, :C_OLD]))
        expected = -(outputs * labels).mean(axis=1)
        got = self.variant(functools.partial(distillation.knowledge_distillation,
                                             alpha=alpha))(z, q, OLD)
        chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=RTOL, atol=ATOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_unbiased_knowledge_distillation_matches_mib_reference(self):
        z, q = _logits(9), _logits(10)
        alpha = 0.5
        inputs, targets = _nchw(z)[:, :K_T], alpha * _nchw(q)[:, :C_OLD]
        new_cl = K_T - C_OLD
        new_bkg_idx = [0] + list(range(C_OLD, K_T))
        den = _logsumexp(inputs)
        outputs_no_bkg = inputs[:, 1:-new_cl] - den[:, None]
        outputs_bkg = _logsumexp(inputs[:, new_bkg_idx]) - den
        labels = np.exp(_log_softmax(targets))
        expected = -(labels[:, 0] * outputs_bkg
                     + (labels[:, 1:] * outputs_no_bkg).sum(axis=1)) / C_OLD
        got = self.variant(functools.partial(distillation.unbiased_knowledge_distillation,
                                             alpha=alpha))(z, q, SEEN, OLD)
        chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=RTOL, atol=ATOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sigmoid_distillation_matches_icarl_reference(self):
        z, q = _logits(11), _logits(12)
        x, t = _nchw(z)[:, :C_OLD], 1 / (1 + np.exp(-_nchw(q)[:, :C_OLD]))
        # PLOP: icarl * C_o * BCEWithLogitsLoss(mean over B, C_o, H, W)
        #       == icarl * mean_pix(sum_c)
        expected_mean = C_OLD * _bce(x, t).mean()
        got = self.variant(distillation.sigmoid_distillation)(z, q, OLD)
        chex.assert_trees_all_close(jnp.mean(got), np.float32(expected_mean), rtol=RTOL)

    def test_distillation_is_minimal_for_identical_teacher_and_student(self):
        # KD terms are cross-entropies: at z == q (old channels only live) their value is the
        # teacher's entropy term and their gradient w.r.t. the student vanishes; the
        # regression-type terms (sigmoid KD gradient, feature MSE) vanish as well.
        z = jnp.asarray(_logits(13))
        z_old_only = jnp.where(OLD, z, 0.0)
        t = np.exp(_log_softmax(_nchw(np.asarray(z))[:, :C_OLD]))
        entropy = -(t * np.log(t)).sum(axis=1) / C_OLD
        kd = distillation.knowledge_distillation(z, z, OLD)
        chex.assert_trees_all_close(kd, entropy.astype(np.float32), rtol=RTOL, atol=ATOL)
        # Gradients: softmax differences of equal inputs, float32 rounding only.
        grads = [
            jax.grad(lambda s: jnp.sum(distillation.knowledge_distillation(s, z, OLD)))(z),
            jax.grad(lambda s: jnp.sum(distillation.unbiased_knowledge_distillation(
                s, z_old_only, OLD, OLD)))(z_old_only),
            jax.grad(lambda s: jnp.sum(distillation.sigmoid_distillation(s, z, OLD)))(z),
        ]
        for grad in grads:
            chex.assert_trees_all_close(grad, jnp.zeros_like(grad), atol=ATOL)
        feats = jnp.asarray(_logits(14))
        self.assertEqual(float(distillation.feature_mse(feats, feats)), 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_feature_mse_matches_mse_and_sample_weights(self):
        rng = np.random.default_rng(15)
        a = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
        b = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
        plain = self.variant(distillation.feature_mse)(a, b)
        chex.assert_trees_all_close(plain, np.float32(((a - b) ** 2).mean()), rtol=RTOL)
        weighted = self.variant(distillation.feature_mse)(a, b, np.array([0.0, 1.0]))
        chex.assert_trees_all_close(weighted, np.float32(((a[1] - b[1]) ** 2).mean()),
                                    rtol=RTOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_init_balanced_copies_background_and_lowers_biases(self):
        kernel = np.arange(1 * 1 * 2 * K, dtype=np.float32).reshape(1, 1, 2, K)
        bias = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
        new_kernel, new_bias = self.variant(distillation.init_balanced)(kernel, bias, CURRENT)
        expected_kernel = kernel.copy()
        expected_kernel[..., 3] = kernel[..., 0]
        expected_kernel[..., 4] = kernel[..., 0]
        shifted = 0.5 - np.log(3.0)  # |C_t| = 2 new classes
        expected_bias = np.array([shifted, 1.0, 2.0, shifted, shifted, 5.0], np.float32)
        chex.assert_trees_all_close(new_kernel, expected_kernel)
        chex.assert_trees_all_close(new_bias, expected_bias, rtol=RTOL)

    def test_init_balanced_preserves_background_probability(self):
        # MiB's rationale: p_new(bg) + Σ p_new(new) equals the old p(bg) at initialisation.
        rng = np.random.default_rng(16)
        features = rng.normal(size=(7, 2)).astype(np.float32)
        kernel = rng.normal(size=(2, K)).astype(np.float32)
        bias = rng.normal(size=(K,)).astype(np.float32)
        new_kernel, new_bias = distillation.init_balanced(kernel, bias, CURRENT)
        p_old = jax.nn.softmax(jnp.where(OLD, features @ kernel + bias, -jnp.inf))
        p_new = jax.nn.softmax(jnp.where(SEEN, features @ new_kernel + new_bias, -jnp.inf))
        chex.assert_trees_all_close(p_new[:, 0] + p_new[:, 3] + p_new[:, 4], p_old[:, 0],
                                    rtol=RTOL)


class _TinyAVS(nn.Module):
    """A CAVS-shaped stand-in for ``AVSModel`` (its call, logits and the features AVM reads):
    per-pixel logits from the frames, "neck" maps at three scales, TPAVI's aligned audio at
    stages 0 and 2 (stage 1 has no TPAVI: None), one BatchNorm (train-mode statistics)."""

    num_classes: int = 3
    freeze_audio: bool = False

    @nn.compact
    def __call__(self, frames, audio, frame_mask, *, train):
        n, t, h, w, _ = frames.shape
        x = nn.BatchNorm(use_running_average=not train)(frames.reshape(n * t, h, w, 3))
        sound = audio.reshape(n * t, -1)
        neck = tuple(nn.Dense(4)(x[:, ::s, ::s]) for s in (1, 2, 4))
        aligned = (nn.Dense(4)(sound), None, nn.Dense(4)(sound))
        logits = nn.Dense(self.num_classes)(x).reshape(n, t, h, w, self.num_classes)
        return logits, {"neck": neck, "aligned_audio": aligned}


def test_avm_weight_adds_weighted_avm_to_the_training_loss():
    """``loss.avm_weight`` = λ: the train step's loss is CE + λ·AVM (fine-tuning, no
    penalty), with CE transcribed in numpy (mean over the annotated frames' pixels) and AVM
    from ``avm_kl_loss`` on the same train-mode forward's TPAVI stages; λ = 0 (the default)
    and dropped audio (CMR's twin) add nothing."""
    rng = np.random.default_rng(17)
    n, t, size = 2, 2, 8
    batch = {"frames": jnp.asarray(rng.normal(size=(n, t, size, size, 3)), jnp.float32),
             "audio": jnp.asarray(rng.normal(size=(n, t, 96, 64)), jnp.float32),
             "frame_mask": jnp.ones((n, t)), "label_mask": jnp.asarray([[1, 0], [1, 1]],
                                                                      jnp.float32),
             "valid": jnp.ones((n,)),
             "labels": jnp.asarray(rng.integers(0, 3, (n, t, size, size)), jnp.int32)}
    model, seen = _TinyAVS(), jnp.ones((3,), bool)
    variables = model.init(jax.random.key(0), batch["frames"], batch["audio"],
                           batch["frame_mask"], train=False)
    (logits, features), _ = model.apply(variables, batch["frames"], batch["audio"],
                                        batch["frame_mask"], train=True,
                                        mutable=["batch_stats"])
    log_probs = _log_softmax(np.asarray(logits, np.float64), axis=-1)
    picked = np.take_along_axis(log_probs, np.asarray(batch["labels"])[..., None], -1)[..., 0]
    annotated = np.asarray(batch["label_mask"], bool)
    ce = -picked[annotated].mean()
    avm = segmentation.avm_kl_loss(
        logits.reshape(n * t, size, size, 3), [features["aligned_audio"][i] for i in (0, 2)],
        [features["neck"][i] for i in (0, 2)], batch["label_mask"].reshape(-1), seen)

    problem = CAVSProblem(model, avm_weight=0.5)
    tx = optim.build_optimizer(ml_collections.ConfigDict(dict(
        name="adam", lr=1e-3, weight_decay=0.0, grad_clip=0.0)), ())
    state = create_state(variables, tx, 3, 0, False, {}).replace(seen=seen)
    step = jax.jit(steps.make_train_step(problem, Finetune(problem=problem)))
    _, metrics = step(state, batch, jax.random.key(0))
    chex.assert_trees_all_close(metrics["avm"], 0.5 * avm, rtol=RTOL)
    chex.assert_trees_all_close(metrics["loss"], np.float32(ce + 0.5 * float(avm)), rtol=RTOL)
    assert float(avm) > 0.0
    outputs, _ = problem.apply(variables, batch, train=True)
    assert CAVSProblem(model).loss_terms(outputs, batch, seen) == {}
    assert problem.loss_terms(outputs, batch, seen, drop=frozenset({"audio"})) == {}


if __name__ == "__main__":
    absltest.main()
