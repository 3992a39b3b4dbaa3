"""EWC / SI / MAS pytree transforms vs hand-computed values (spec_family §D).

Tolerances: every value is a handful of float32 operations on O(1) numbers, so rtol=1e-6
(a few ulps) holds; sums over trees of < 10 elements keep it.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jax_cavs.cl import regularizers
from jax_cavs.cl.strategies.ewc import EWC
from jax_cavs.core import roles

RTOL = 1e-6


def _params():
    return {"encoder": {"conv": {"kernel": jnp.array([1.0, 2.0]), "bias": jnp.array([3.0])},
                        "BatchNorm_0": {"scale": jnp.array([1.0, 1.0])}},
            "head": {"kernel": jnp.array([[0.5]])}}


class MaskTest(absltest.TestCase):

    def test_param_paths_and_mask(self):
        params = _params()
        self.assertEqual(roles.param_paths(params)["encoder"]["conv"]["kernel"],
                         "encoder/conv/kernel")
        mask = roles.leaf_mask(params, exclude=[r"BatchNorm", r"^head/"])
        self.assertEqual(mask, {"encoder": {"conv": {"kernel": True, "bias": True},
                                            "BatchNorm_0": {"scale": False}},
                                "head": {"kernel": False}})

    def test_apply_mask_zeros_excluded_leaves(self):
        params = _params()
        masked = regularizers.apply_mask(params, roles.leaf_mask(params, exclude=["head"]))
        np.testing.assert_array_equal(masked["head"]["kernel"], [[0.0]])
        np.testing.assert_array_equal(masked["encoder"]["conv"]["kernel"], [1.0, 2.0])


class PenaltyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_quadratic_penalty_by_hand(self):
        params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[3.0]])}
        anchor = {"a": jnp.array([0.0, 2.0]), "b": jnp.array([[1.0]])}
        importance = {"a": jnp.array([2.0, 5.0]), "b": jnp.array([[0.5]])}
        # Σ Ω (θ-θ*)² = 2·1 + 5·0 + 0.5·4 = 4; λ c = 3 · 0.5.
        got = self.variant(functools.partial(regularizers.quadratic_penalty, lam=3.0))(
            params, anchor, importance)
        chex.assert_trees_all_close(got, jnp.float32(6.0), rtol=RTOL)
        got_c1 = regularizers.quadratic_penalty(params, anchor, importance, lam=3.0, c=1.0)
        chex.assert_trees_all_close(got_c1, jnp.float32(12.0), rtol=RTOL)

    def test_penalty_and_its_gradient_vanish_at_the_anchor(self):
        params = _params()
        importance = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 7.0), params)
        value, grad = jax.value_and_grad(regularizers.quadratic_penalty)(
            params, params, importance, 100.0)
        self.assertEqual(float(value), 0.0)
        for leaf in jax.tree_util.tree_leaves(grad):
            np.testing.assert_array_equal(leaf, 0.0)


class EwcTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_fisher_is_mean_of_squared_batch_gradients(self):
        g1 = {"w": jnp.array([1.0, -2.0])}
        g2 = {"w": jnp.array([3.0, 0.5])}

        def fisher(g1, g2):
            acc = regularizers.accumulate_squared(regularizers.zeros_like(g1), g1)
            acc = regularizers.accumulate_squared(acc, g2)
            return regularizers.fisher_from_grads(acc, 2)

        got = self.variant(fisher)(g1, g2)
        chex.assert_trees_all_close(got, {"w": jnp.array([5.0, 2.125])}, rtol=RTOL)

    def test_online_merge(self):
        importance, fisher = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 4.0])}
        params = {"w": jnp.array([9.0, 8.0])}
        merged, anchor = regularizers.consolidate_ewc(importance, {"w": jnp.zeros(2)}, fisher,
                                                      params, mode="online", gamma=0.5)
        chex.assert_trees_all_close(merged, {"w": jnp.array([3.5, 5.0])}, rtol=RTOL)
        chex.assert_trees_all_close(anchor, params)

    def test_online_gamma_half_at_half_lambda_is_facils_merge(self):
        # FACIL (α = 0.5, from 0): F1 = [2, 4] -> [1, 2]; F2 = [6, 0] -> [0.5 + 3, 1 + 0] =
        # [3.5, 1]. Ours with γ = 0.5: [2, 4] -> [1 + 6, 2 + 0] = [7, 2] = FACIL / (1 - α),
        # so λ_ours = λ_FACIL · (1 - α) gives the same penalty (ewc.py docstring).
        f1, f2 = {"w": jnp.array([2.0, 4.0])}, {"w": jnp.array([6.0, 0.0])}
        params, zero = {"w": jnp.ones(2)}, {"w": jnp.zeros(2)}
        ours, _ = regularizers.consolidate_ewc(zero, zero, f1, params, gamma=0.5)
        ours, _ = regularizers.consolidate_ewc(ours, params, f2, params, gamma=0.5)
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda w: 0.5 * w, ours),
                                    {"w": jnp.array([3.5, 1.0])}, rtol=RTOL)
        # The defaults (γ = 1) are not that merge: after one task Ω = F1, twice FACIL's.
        defaults = EWC()
        self.assertEqual((defaults.lam, defaults.c, defaults.gamma), (5000.0, 0.5, 1.0))

    def test_separate_merge_by_hand(self):
        merged, anchor = regularizers.consolidate_ewc(
            {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 5.0])},
            {"w": jnp.array([3.0, 0.0])}, {"w": jnp.array([4.0, 7.0])}, mode="separate")
        chex.assert_trees_all_close(merged, {"w": jnp.array([4.0, 0.0])}, rtol=RTOL)
        # (1·0 + 3·4) / 4 = 3; no importance at all -> the new parameters.
        chex.assert_trees_all_close(anchor, {"w": jnp.array([3.0, 7.0])}, rtol=RTOL)

    def test_separate_merge_equals_sum_of_per_task_penalties_up_to_a_constant(self):
        rng = np.random.default_rng(0)
        f1, f2, a1, a2, t1, t2 = (
            {"w": jnp.asarray(rng.uniform(0.1, 2.0, size=4), jnp.float32)} for _ in range(6))
        importance, anchor = regularizers.consolidate_ewc(
            regularizers.zeros_like(f1), a1, f1, a1, mode="separate")
        importance, anchor = regularizers.consolidate_ewc(importance, anchor, f2, a2,
                                                          mode="separate")

        def per_task(theta):
            return (regularizers.quadratic_penalty(theta, a1, f1, 1.0)
                    + regularizers.quadratic_penalty(theta, a2, f2, 1.0))

        def merged(theta):
            return regularizers.quadratic_penalty(theta, anchor, importance, 1.0)

        for theta in (t1, t2):
            chex.assert_trees_all_close(jax.grad(merged)(theta), jax.grad(per_task)(theta),
                                        rtol=1e-5, atol=1e-6)
        gap = [float(per_task(t) - merged(t)) for t in (t1, t2)]
        self.assertAlmostEqual(gap[0], gap[1], places=5)
        self.assertGreaterEqual(gap[0], -1e-6)

    def test_unknown_mode_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "EWC mode"):
            regularizers.consolidate_ewc({}, {}, {}, {}, mode="both")


class SiTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_path_integral_step_and_consolidation(self):
        def run(omega, grads, before, after, importance):
            omega = regularizers.si_step(omega, grads, before, after)
            return omega, regularizers.consolidate_si(importance, omega, after, before, xi=0.1)

        zeros = {"w": jnp.zeros(2)}
        omega, (importance, reset, anchor) = self.variant(run)(
            zeros, {"w": jnp.array([1.0, -2.0])}, zeros, {"w": jnp.array([0.1, 0.3])}, zeros)
        # ω = -g·Δθ = [-0.1, 0.6]; Ω = max(ω, 0) / (Δθ² + ξ) = [0, 0.6 / 0.19].
        chex.assert_trees_all_close(omega, {"w": jnp.array([-0.1, 0.6])}, rtol=RTOL)
        chex.assert_trees_all_close(importance, {"w": jnp.array([0.0, 0.6 / 0.19])}, rtol=RTOL)
        chex.assert_trees_all_close(reset, zeros)
        chex.assert_trees_all_close(anchor, {"w": jnp.array([0.1, 0.3])})


class MasTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_sensitivity_of_a_linear_map(self):
        rng = np.random.default_rng(1)
        weight = rng.normal(size=(3, 2)).astype(np.float32)
        batches = [rng.normal(size=(2, 3)).astype(np.float32),
                   rng.normal(size=(1, 3)).astype(np.float32)]

        def sensitivity(weight, x1, x2):
            acc = {"w": jnp.zeros_like(weight)}
            for x in (x1, x2):
                grads = jax.grad(lambda w: regularizers.mas_objective(x @ w))(weight)
                acc = regularizers.accumulate_abs(acc, {"w": grads}, weight=x.shape[0])
            return regularizers.mas_from_grads(acc, 3)

        # d/dW mean_b ‖x_b W‖ = mean_b x_bᵀ (x_b W) / ‖x_b W‖.
        expected = np.zeros((3, 2))
        for x in batches:
            out = x.astype(np.float64) @ weight
            grad = sum(np.outer(xb, ob / np.linalg.norm(ob)) for xb, ob in zip(x, out))
            expected += np.abs(grad / len(x)) * len(x)
        got = self.variant(sensitivity)(weight, *batches)
        chex.assert_trees_all_close(got, {"w": (expected / 3).astype(np.float32)}, rtol=1e-5)

    def test_mas_objective_has_zero_gradient_at_zero_output(self):
        grad = jax.grad(lambda w: regularizers.mas_objective(jnp.zeros((2, 3)) @ w))(
            jnp.ones((3, 2)))
        np.testing.assert_array_equal(grad, 0.0)

    def test_alpha_merge(self):
        merged, anchor = regularizers.consolidate_mas({"w": jnp.array([2.0])},
                                                      {"w": jnp.array([4.0])},
                                                      {"w": jnp.array([1.0])}, alpha=0.25)
        chex.assert_trees_all_close(merged, {"w": jnp.array([3.5])}, rtol=RTOL)
        chex.assert_trees_all_close(anchor, {"w": jnp.array([1.0])})


if __name__ == "__main__":
    absltest.main()
