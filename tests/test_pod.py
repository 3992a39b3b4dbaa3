"""PLOP Local POD vs a numpy transcription of ``_local_pod`` / ``features_distillation``.

The reference works on channels-first arrays and slices the logits' channels as PLOP does;
the JAX code works channels-last with class masks.

Tolerances: float32 embeddings are means of <= 49 values and the norms sum a few hundred
squares, so the relative error is ~1e-6; rtol=1e-5 leaves margin (references in float64).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jax_cavs.problems.cavs.losses import pod

RTOL = 1e-5
K, C_OLD, K_T = 6, 3, 5  # old {0,1,2}, current {3,4}, unseen {5}
SEEN = np.array([1, 1, 1, 1, 1, 0], bool)
OLD = np.array([1, 1, 1, 0, 0, 0], bool)
CURRENT = SEEN & ~OLD


def _reference_local_pod(x, scales=(1, 2, 4)):
    """PLOP's ``_local_pod`` on x [B, C, H, W] (normalize=False), as a numpy loop."""
    b, w = x.shape[0], x.shape[-1]
    emb = []
    for scale in scales:
        k = w // scale
        for i in range(scale):
            for j in range(scale):
                tensor = x[..., i * k:(i + 1) * k, j * k:(j + 1) * k]
                emb.append(tensor.mean(axis=3).reshape(b, -1))
                emb.append(tensor.mean(axis=2).reshape(b, -1))
    return np.concatenate(emb, axis=1)


def _reference_layer(a, b, factor, schedule):
    a, b = a ** 2, b ** 2
    diff = _reference_local_pod(a) - _reference_local_pod(b)
    return factor * np.sqrt((diff ** 2).sum(-1)).mean() * schedule


def _nchw(x):
    return np.moveaxis(np.asarray(x, np.float64), -1, 1)


class LocalPodEmbeddingTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_embedding_of_4x4_map_matches_plop_loop(self):
        x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
        got = self.variant(pod.local_pod_embedding)(x)
        expected = _reference_local_pod(_nchw(x))
        self.assertEqual(got.shape, (2, 3 * (2 * 4 + 4 * 2 * 2 + 16 * 2 * 1)))
        chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=RTOL)

    def test_embedding_of_4x4_ramp_by_hand(self):
        x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
        got = np.asarray(pod.local_pod_embedding(x))[0]
        # Scale 1: row means, then column means of [[0..3], [4..7], [8..11], [12..15]].
        np.testing.assert_allclose(got[:8], [1.5, 5.5, 9.5, 13.5, 6, 7, 8, 9])
        # Scale 2, region (0, 1) = [[2, 3], [6, 7]]: row means 2.5, 6.5; column means 4, 5.
        np.testing.assert_allclose(got[12:16], [2.5, 6.5, 4, 5])
        # Scale 4, last region = pixel 15: width and height means are both 15.
        np.testing.assert_allclose(got[-2:], [15, 15])

    @chex.variants(with_jit=True, without_jit=True)
    def test_embedding_drops_trailing_pixels_like_plop(self):
        x = np.random.default_rng(1).normal(size=(1, 7, 7, 2)).astype(np.float32)
        got = self.variant(pod.local_pod_embedding)(x)
        chex.assert_trees_all_close(got, _reference_local_pod(_nchw(x)).astype(np.float32),
                                    rtol=RTOL)

    def test_non_square_map_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "square"):
            pod.local_pod_embedding(jnp.zeros((1, 4, 8, 2)))


class PodLossTest(chex.TestCase):

    def _inputs(self, seed):
        rng = np.random.default_rng(seed)
        feats_old = [rng.normal(size=(2, 8, 8, 4)).astype(np.float32),
                     rng.normal(size=(2, 4, 4, 3)).astype(np.float32)]
        feats_new = [f + 0.3 * rng.normal(size=f.shape).astype(np.float32)
                     for f in feats_old]
        old_logits = rng.normal(size=(2, 4, 4, K)).astype(np.float32)
        old_logits[..., ~OLD] = 7.0  # the teacher's dead channels must not matter
        new_logits = rng.normal(size=(2, 4, 4, K)).astype(np.float32)
        new_logits[..., 5] = -9.0    # unseen
        return feats_old, feats_new, old_logits, new_logits

    @chex.variants(with_jit=True, without_jit=True)
    def test_pod_loss_matches_plop_features_distillation(self):
        feats_old, feats_new, old_logits, new_logits = self._inputs(2)
        schedule = np.sqrt(K_T / 2)  # sqrt(nb_current_classes / nb_new_classes)
        layers = [_reference_layer(_nchw(a), _nchw(b), 0.01, schedule)
                  for a, b in zip(feats_old, feats_new)]
        a = _nchw(old_logits)[:, :C_OLD]
        b = _nchw(new_logits)[:, :K_T]
        folded = np.zeros_like(a)
        folded[:, 0] = b[:, 0] + b[:, C_OLD:].sum(axis=1)
        folded[:, 1:] = b[:, 1:C_OLD]
        layers.append(_reference_layer(a, folded, 0.0005, schedule))
        expected = sum(layers) / len(layers)

        loss_fn = functools.partial(pod.pod_loss, old=OLD, current=CURRENT, seen=SEEN)
        got = self.variant(loss_fn)(feats_old, feats_new, old_logits=old_logits,
                                    new_logits=new_logits)
        chex.assert_trees_all_close(got, np.float32(expected), rtol=RTOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sample_weights_select_frames(self):
        feats_old, feats_new, old_logits, new_logits = self._inputs(3)
        loss_fn = functools.partial(pod.pod_loss, old=OLD, current=CURRENT, seen=SEEN)
        weighted = self.variant(loss_fn)(feats_old, feats_new, old_logits=old_logits,
                                         new_logits=new_logits,
                                         sample_weights=np.array([0.0, 1.0]))
        only_second = loss_fn([f[1:] for f in feats_old], [f[1:] for f in feats_new],
                              old_logits=old_logits[1:], new_logits=new_logits[1:])
        chex.assert_trees_all_close(weighted, only_second, rtol=RTOL)

    def test_pod_is_zero_with_zero_gradient_for_identical_teacher_and_student(self):
        feats_old, _, old_logits, _ = self._inputs(4)
        # A student identical to the teacher: same maps, same old logits, no new-class mass.
        # Both are runtime arguments of the jit'd function: a closed-over teacher would be
        # constant-folded with another summation order and differ by float32 rounding.
        new_logits = np.where(OLD, old_logits, 0.0).astype(np.float32)

        def loss(feats, logits, teacher_feats, teacher_logits):
            return pod.pod_loss(teacher_feats, feats, old_logits=teacher_logits,
                                new_logits=logits, old=OLD, current=CURRENT, seen=SEEN)

        value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
            feats_old, new_logits, feats_old, old_logits)
        self.assertEqual(float(value), 0.0)
        for grad in jax.tree_util.tree_leaves(grads):
            np.testing.assert_array_equal(np.asarray(grad), 0.0)  # torch.norm's 0, not NaN

    def test_unseen_logits_get_zero_gradient_and_current_ones_do_not(self):
        feats_old, feats_new, old_logits, new_logits = self._inputs(5)
        grad = jax.jit(jax.grad(lambda z: pod.pod_loss(
            feats_old, feats_new, old_logits=old_logits, new_logits=z, old=OLD,
            current=CURRENT, seen=SEEN)))(new_logits)
        np.testing.assert_array_equal(np.asarray(grad[..., 5]), 0.0)
        self.assertGreater(float(jnp.abs(grad[..., 3:5]).sum()), 0.0)


if __name__ == "__main__":
    absltest.main()
