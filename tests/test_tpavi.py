"""TPAVI's factorised form vs a direct numpy evaluation of the dense formula (spec §3.3).

The reference materialises everything the factorised module avoids: Â broadcast over (h, w), the
[P, P] affinity f = θφᵀ divided by P = T·h·w, y = f̃ g, then W_z conv + BatchNorm, the residual and
the LayerNorm, per group of ``group_size`` frames, in float64 from the module's own parameters.

Tolerance: the module runs in float32 (unit roundoff u = 2^-24 ≈ 6e-8). Its longest reductions are
the channel contractions (C = 6, I = 4) and the affinity sum over P = 5·3·2 = 30 positions, chained
through ~6 layers, so W_z y carries an absolute error of about Σ n_i·u·max|W_z y| ≈ 50·6e-8·0.5 =
1.5e-6. BatchNorm then divides by the std it normalises with and multiplies by γ ≤ 1.5:
- eval mode: running var ≥ 0.5 (set below), amplification ≤ 1.5·1.4 -> ~3e-6; rtol = atol = 1e-5;
- train mode: the batch std of W_z y is only ~0.05 (its bias dominates), amplification ≤ 1.5/0.047
  ≈ 32 -> ~5e-5; atol = 1e-4 (LayerNorm outputs are O(1)).
A wrong term (1/P factor, missing bias, wrong grouping) changes the output by O(1e-1).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from flax.core import unfreeze

from jax_cavs.models.fusion.tpavi import TPAVI

N, T, H, W, C, D_AUDIO, INTER, GROUP = 2, 10, 3, 2, 6, 8, 4, 5
EPS = 1e-5
TOL = dict(rtol=1e-5, atol=1e-5)
TOL_TRAIN = dict(rtol=1e-5, atol=1e-4)


def _dense_reference(params, batch_stats, x, audio, train):
    """Dense TPAVI in float64; returns (out, aligned_audio, batch_mean, batch_var)."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    x = np.asarray(x, np.float64)
    audio = np.asarray(audio, np.float64)
    n, t, h, w, c = x.shape
    groups = n * t // GROUP
    xg = x.reshape(groups, GROUP, h, w, c)
    ag = audio.reshape(groups, GROUP, -1)
    num_pos = GROUP * h * w

    aligned = ag @ p["align_channel"]["kernel"]                                 # [G, Tg, C]
    aligned_hat = np.broadcast_to(aligned[:, :, None, None, :], xg.shape)       # Â
    w_y = np.empty(xg.shape)
    for gi in range(groups):
        pos_x = xg[gi].reshape(num_pos, c)
        pos_a = aligned_hat[gi].reshape(num_pos, c)
        theta = pos_x @ p["theta"]["kernel"] + p["theta"]["bias"]               # [P, I]
        phi = pos_a @ p["phi"]["kernel"] + p["phi"]["bias"]                     # [P, I]
        g = pos_x @ p["g"]["kernel"] + p["g"]["bias"]                           # [P, I]
        affinity = theta @ phi.T / num_pos                                      # [P, P]
        y = affinity @ g                                                        # [P, I]
        w_y[gi] = (y @ p["W_z_0"]["kernel"] + p["W_z_0"]["bias"]).reshape(GROUP, h, w, c)

    if train:
        mean, var = w_y.mean(axis=(0, 1, 2, 3)), w_y.var(axis=(0, 1, 2, 3))
    else:
        mean, var = (np.asarray(batch_stats["W_z_1"][k], np.float64) for k in ("mean", "var"))
    bn = (w_y - mean) / np.sqrt(var + EPS) * p["W_z_1"]["scale"] + p["W_z_1"]["bias"]
    z = bn + xg
    z_norm = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + EPS)
    out = z_norm * p["norm_layer"]["scale"] + p["norm_layer"]["bias"]
    return out.reshape(n, t, h, w, c), aligned.reshape(n, t, c), mean, var


class TPAVITest(chex.TestCase, parameterized.TestCase):

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.x = jnp.asarray(rng.normal(size=(N, T, H, W, C)), jnp.float32)
        self.audio = jnp.asarray(rng.normal(size=(N, T, D_AUDIO)), jnp.float32)
        self.module = TPAVI(inter_channels=INTER, group_size=GROUP)
        variables = unfreeze(self.module.init(jax.random.PRNGKey(0), self.x, self.audio,
                                              train=False))
        # Non-zero BN affine and running statistics, so the W_z path contributes to the output.
        variables["params"]["W_z_1"]["scale"] = jnp.asarray(rng.uniform(0.5, 1.5, C), jnp.float32)
        variables["params"]["W_z_1"]["bias"] = jnp.asarray(rng.normal(size=C), jnp.float32)
        variables["params"]["norm_layer"]["scale"] = jnp.asarray(rng.uniform(0.5, 1.5, C),
                                                                 jnp.float32)
        variables["params"]["norm_layer"]["bias"] = jnp.asarray(rng.normal(size=C), jnp.float32)
        variables["batch_stats"]["W_z_1"]["mean"] = jnp.asarray(rng.normal(size=C) * 0.1,
                                                                jnp.float32)
        variables["batch_stats"]["W_z_1"]["var"] = jnp.asarray(rng.uniform(0.5, 2.0, C),
                                                               jnp.float32)
        self.variables = variables

    @chex.variants(with_jit=True, without_jit=True)
    def test_eval_mode_matches_dense_formula(self):
        apply = self.variant(functools.partial(self.module.apply, train=False))
        out, aligned = apply(self.variables, self.x, self.audio)
        ref_out, ref_aligned, _, _ = _dense_reference(self.variables["params"],
                                                      self.variables["batch_stats"],
                                                      self.x, self.audio, train=False)
        chex.assert_trees_all_close(out, ref_out.astype(np.float32), **TOL)
        chex.assert_trees_all_close(aligned, ref_aligned.astype(np.float32), **TOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_train_mode_matches_dense_formula_and_updates_running_stats(self):
        apply = self.variant(functools.partial(self.module.apply, train=True,
                                               mutable=["batch_stats"]))
        (out, _), updates = apply(self.variables, self.x, self.audio)
        ref_out, _, batch_mean, batch_var = _dense_reference(
            self.variables["params"], self.variables["batch_stats"], self.x, self.audio,
            train=True)
        chex.assert_trees_all_close(out, ref_out.astype(np.float32), **TOL_TRAIN)
        old = self.variables["batch_stats"]["W_z_1"]
        expected_stats = {"mean": 0.9 * np.asarray(old["mean"]) + 0.1 * batch_mean,
                          "var": 0.9 * np.asarray(old["var"]) + 0.1 * batch_var}
        chex.assert_trees_all_close(dict(updates["batch_stats"]["W_z_1"]),
                                    jax.tree.map(lambda v: v.astype(np.float32), expected_stats),
                                    **TOL)

    def test_identity_at_init(self):
        """BN γ = β = 0 at init, so z = x and the output is LayerNorm(x) (a fresh init)."""
        variables = self.module.init(jax.random.PRNGKey(1), self.x, self.audio, train=False)
        out, _ = self.module.apply(variables, self.x, self.audio, train=False)
        x = np.asarray(self.x, np.float64)
        expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + EPS)
        chex.assert_trees_all_close(out, expected.astype(np.float32), **TOL)

    @parameterized.parameters(0.0, 0.1)
    def test_gate_init_is_the_initial_batchnorm_scale(self, gate_init):
        """``gate_init`` sets W_z's BatchNorm scale γ (bias β stays 0) and changes no other
        initial variable."""
        key, inputs = jax.random.PRNGKey(1), (self.x, self.audio)
        gated = TPAVI(inter_channels=INTER, group_size=GROUP, gate_init=gate_init).init(
            key, *inputs, train=False)
        default = unfreeze(self.module.init(key, *inputs, train=False))
        default["params"]["W_z_1"]["scale"] = jnp.full((C,), gate_init, jnp.float32)
        chex.assert_trees_all_equal(unfreeze(gated), default)

    def test_groups_are_independent(self):
        """Changing frames 5..9 (second group) leaves frames 0..4 untouched (AVSBench T=5 quirk)."""
        out, _ = self.module.apply(self.variables, self.x, self.audio, train=False)
        x2 = self.x.at[:, GROUP:].multiply(-3.0)
        audio2 = self.audio.at[:, GROUP:].add(1.0)
        out2, _ = self.module.apply(self.variables, x2, audio2, train=False)
        chex.assert_trees_all_equal(out[:, :GROUP], out2[:, :GROUP])
        self.assertGreater(float(jnp.abs(out[:, GROUP:] - out2[:, GROUP:]).max()), 1e-2)

    def test_rejects_clip_length_not_multiple_of_group(self):
        with self.assertRaisesRegex(ValueError, "tpavi_group"):
            self.module.init(jax.random.PRNGKey(0), self.x[:, :7], self.audio[:, :7], train=False)


if __name__ == "__main__":
    absltest.main()
