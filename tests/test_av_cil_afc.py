"""AFC on AV-CIL's problem (``problems/av_cil/strategies/afc.py``) against numpy
transcriptions of the authors' code [AVCIL-code AFC/train_incremental_afc.py, model/layers.py]
and finite differences.

Tolerances as ``test_av_cil_icarl`` (rtol = 1e-5 · sqrt(n), n the terms of the longest
reduction); the importance's finite differences are float64 central differences (step 1e-6:
truncation ~1e-12, rounding ~1e-10) against float32 gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jax_cavs.core import steps
from jax_cavs.core.problem import Outputs
from jax_cavs.problems.av_cil import heads
from jax_cavs.problems.av_cil.model import AVCILNet
from jax_cavs.problems.av_cil.strategies import afc
from test_av_cil_icarl import (ATOL, FRAMES, K, StubProblem, clip_table, context, make_state,
                               model_features, rtol, task_info)

P = heads.LSC_PROXIES


# -- numpy transcriptions of the code ------------------------------------------------------
def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_lsc(x, proxies):
    """``LSCLinear.forward`` (layers.py l. 111-115) with its weight [K·P, D], row c·P + p."""
    weight = np.transpose(proxies, (2, 1, 0)).reshape(-1, proxies.shape[0])
    a, b = np_normalize(x), np_normalize(weight)
    mat = np.concatenate([a, b])  # stable_cosine_distance, squared=True (l. 7-35)
    d = (mat ** 2).sum(1, keepdims=True) + (mat.T ** 2).sum(0, keepdims=True) - 2 * mat @ mat.T
    d = np.maximum(d, 0.0)
    d = d * (d > 0) * (1 - np.eye(len(mat)))
    raw = -d[:len(a), len(a):]
    per_class = raw.reshape(len(x), -1, P)  # reduce_proxies (l. 37-45)
    att = np.exp(per_class - per_class.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    return (per_class * att).sum(-1)


def np_nca_rows(similarities, targets, scale=1.0, margin=0.6):
    """``nca`` (train_incremental_afc.py l. 43-63), per row, on the model's outputs."""
    s = scale * (similarities - margin)
    s = s - s.max(1, keepdims=True)
    rows = np.arange(len(s))
    disable = np.zeros_like(s)
    disable[rows, targets] = s[rows, targets]
    return -(s[rows, targets] - np.log(np.exp(s - disable).sum(-1)))


SEEN = np.array([True, True, True, False])


def seen_columns(x):
    return np.asarray(x, np.float64)[:, SEEN]


class LSCAndNCATest(absltest.TestCase):

    def test_lsc_matches_the_code(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(5, 6)).astype(np.float32)
        x[1] = 0.0  # a zero feature: F.normalize's eps
        proxies = rng.normal(size=(6, P, K)).astype(np.float32)
        got = heads.lsc_similarities(jnp.asarray(x), jnp.asarray(proxies))
        np.testing.assert_allclose(got, np_lsc(np.float64(x), np.float64(proxies)),
                                   rtol=rtol(6 * P), atol=ATOL)

    def test_nca_matches_the_code(self):
        rng = np.random.default_rng(1)
        sims = rng.uniform(-4, 0, size=(6, K)).astype(np.float32)
        labels = np.array([0, 1, 2, 2, 1, 0], np.int32)
        for scale in (1.0, 2.7):
            got = afc.nca_rows(jnp.asarray(sims), jnp.asarray(labels),
                               jnp.full((6,), scale, jnp.float32), jnp.asarray(SEEN))
            np.testing.assert_allclose(got, np_nca_rows(seen_columns(sims), labels, scale),
                                       rtol=rtol(K), atol=ATOL)


def av_problem(dim=5):
    return StubProblem(AVCILNet(K, modality="audio-visual", dim=dim, num_frames=FRAMES,
                                head="lsc"))


def outputs_of(problem, params, table, ids):
    out, _ = problem.apply({"params": params}, {k: jnp.asarray(v[ids]) for k, v in
                                                 table.items()}, train=False)
    return out


class ImportanceTest(absltest.TestCase):

    def test_importance_against_finite_differences(self):
        problem = av_problem()
        params = problem.init(seed=2)["params"]
        table = clip_table([0, 1, 2, 2, 1, 0], seed=4)
        ids = np.arange(6)
        teacher = outputs_of(problem, params, table, ids)
        got = jax.device_get(jax.jit(afc.feature_importance)(
            params, teacher, jnp.asarray(table["label"]), jnp.asarray(SEEN)))

        f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
        proxies = f64(params["classifier"]["proxies"])
        kernel, bias = f64(params["visual_proj"]["kernel"]), f64(params["visual_proj"]["bias"])
        h_a, p = f64(teacher.features["audio"]), f64(teacher.features["pooled_visual"])

        def row_loss(b, h_a_b, h_v_b):
            s = np_lsc((h_a_b + h_v_b)[None], proxies)
            return np_nca_rows(s[:, SEEN], table["label"][b:b + 1])[0]

        def fd(fn, x, step=1e-6):
            grad = np.zeros_like(x)
            for j in range(x.size):
                e = np.zeros_like(x)
                e[j] = step
                grad[j] = (fn(x + e) - fn(x - e)) / (2 * step)
            return grad

        relu = lambda z: np.maximum(z, 0)  # noqa: E731
        for b in ids:
            h_v = relu(p[b] @ kernel + bias)
            norms = {
                "audio": np.linalg.norm(fd(lambda h: row_loss(b, h, h_v), h_a[b])),
                "visual": np.linalg.norm(fd(lambda h: row_loss(b, h_a[b], h), h_v)),
                "pooled_visual": np.linalg.norm(fd(
                    lambda q: row_loss(b, h_a[b], relu(q @ kernel + bias)), p[b]))}
            total = sum(norms.values())
            for name, value in norms.items():
                np.testing.assert_allclose(got[name][b], value / total,
                                           rtol=rtol(5 * P * K), err_msg=name)


class DiscrepancyTest(absltest.TestCase):

    def test_weighted_and_plain_match_the_code(self):
        rng = np.random.default_rng(5)
        names = ("pooled_visual", "audio", "visual", "fused")
        student = {m: rng.normal(size=(4, 6)).astype(np.float32) for m in names}
        teacher = {m: rng.normal(size=(4, 6)).astype(np.float32) for m in names}
        importance = {m: rng.uniform(size=(4,)).astype(np.float32) for m in names[:3]}
        weights = np.array([1, 1, 1, 0], np.float32)
        wrap = lambda f: Outputs(None, {m: jnp.asarray(v) for m, v in f.items()})  # noqa: E731

        def dist(m):  # torch.norm(F.normalize(f) - F.normalize(f°), dim=-1), real rows
            return np.linalg.norm(np_normalize(np.float64(student[m][:3]))
                                  - np_normalize(np.float64(teacher[m][:3])), axis=-1)

        ref = sum(np.mean(np.float64(importance[m][:3]) * dist(m)) for m in names[:3])
        got = afc.discrepancy(wrap(student), wrap(teacher),
                              {m: jnp.asarray(v) for m, v in importance.items()},
                              jnp.asarray(weights))
        np.testing.assert_allclose(got, ref, rtol=rtol(18))
        plain = afc.discrepancy(wrap(student), wrap(teacher), None, jnp.asarray(weights))
        np.testing.assert_allclose(plain, np.mean(dist("fused")), rtol=rtol(6))

    def test_zero_distance_has_zero_gradient(self):
        """torch.norm's gradient at 0 is 0: a learner equal to its teacher gets no NaN."""
        f = {"fused": jnp.asarray(np.random.default_rng(8).normal(size=(3, 4)), jnp.float32)}
        grad = jax.grad(lambda x: afc.discrepancy(Outputs(None, {"fused": x}), Outputs(None, f),
                                                  None, jnp.ones((3,))))(f["fused"])
        np.testing.assert_array_equal(grad, np.zeros((3, 4)))


class StrategyTest(absltest.TestCase):
    """Three tasks {0, 1}, {2}, {3}; the second one's hooks and train step."""

    def setUp(self):
        self.tasks = [(0, 1), (2,), (3,)]
        self.table = clip_table(np.repeat(np.arange(K), 6), seed=6)
        self.problem = av_problem(dim=6)
        self.strategy = afc.AFC(memory_size=8, problem=self.problem)
        self.info = task_info(1, self.tasks)
        self.ctx = context(self.problem, self.table, self.info)
        state = make_state(self.problem, self.strategy, self.problem.init(seed=1),
                           task_info(0, self.tasks))
        head = {**state.params["classifier"], "factor": jnp.asarray(3.0)}  # learned on task 1
        self.learned = {**state.params, "classifier": head}
        state = state.replace(params=self.learned)
        self.state = self.strategy.begin_task(state, self.info)

    def test_begin_task_resets_the_scale(self):
        for params in (self.state.params, self.state.old_params):
            self.assertEqual(float(params["classifier"]["factor"]), 1.0)

    def test_prepare_task_imprints_the_new_classes(self):
        state = self.strategy.prepare_task(self.state, self.ctx)
        before = np.asarray(self.learned["classifier"]["proxies"], np.float64)
        after = np.asarray(state.params["classifier"]["proxies"])
        scale = np.linalg.norm(before[:, :, :2], axis=0).mean()
        # 6 clips < 10 proxies: the clips' features, repeated, times the old proxies' norm.
        phi = model_features(self.problem, self.learned, self.table, np.arange(12, 18))
        np.testing.assert_allclose(after[:, :, 2], (phi[np.arange(P) % 6] * scale).T,
                                   rtol=rtol(6), atol=ATOL)
        np.testing.assert_array_equal(after[:, :, [0, 1, 3]], before[:, :, [0, 1, 3]])
        np.testing.assert_array_equal(state.old_params["classifier"]["proxies"], before)

    def test_kmeans_separated_clusters(self):
        rng = np.random.default_rng(7)
        points = np.concatenate([rng.normal(size=(6, 3)) * 0.01 + 5,
                                 rng.normal(size=(6, 3)) * 0.01 - 5])
        centres = afc.kmeans(points, 2, np.random.default_rng(0))
        centres = centres[np.argsort(centres[:, 0])]
        np.testing.assert_allclose(centres, [points[6:].mean(0), points[:6].mean(0)],
                                   rtol=1e-12)

    def test_train_step(self):
        """Loss = NCA + 0.5·√2·L_disc; gradients finite where learner = teacher (the first
        step); old proxies kept, unseen ones untouched (core), new ones trained."""
        state = self.strategy.prepare_task(self.state, self.ctx)
        ids = np.concatenate([np.arange(12, 18), np.arange(0, 2)])
        batch = {k: jnp.asarray(v[ids]) for k, v in self.table.items()}
        batch.update(valid=jnp.ones((8,)).at[-1].set(0.0), is_memory=jnp.zeros((8,)),
                     index=jnp.asarray(ids))
        step = jax.jit(steps.make_train_step(self.problem, self.strategy))
        new, metrics = step(state, batch, jax.random.key(0))
        self.assertLess(float(metrics["disc"]), 1e-6)  # learner = teacher up to rounding
        self.assertTrue(np.isfinite(float(metrics["grad_norm"])))
        before, after = (np.asarray(s.params["classifier"]["proxies"]) for s in (state, new))
        np.testing.assert_array_equal(after[..., [0, 1, 3]], before[..., [0, 1, 3]])
        self.assertFalse(np.allclose(after[..., 2], before[..., 2]))
        self.assertNotEqual(float(new.params["classifier"]["factor"]), 1.0)

        # A second step: learner != teacher, the composition of the terms.
        student = outputs_of(self.problem, new.params, self.table, ids)
        teacher = outputs_of(self.problem, new.old_params, self.table, ids)
        total, terms = self.strategy.loss(new, batch, student, teacher, None)
        self.assertGreater(float(terms["disc"]), 0.0)
        np.testing.assert_allclose(total, terms["nca"] + 0.5 * np.sqrt(2.0) * terms["disc"],
                                   rtol=rtol(3))
        nca = np_nca_rows(seen_columns(student.logits)[:7], self.table["label"][ids][:7],
                          float(new.params["classifier"]["factor"])).mean()
        np.testing.assert_allclose(terms["nca"], nca, rtol=rtol(8))


if __name__ == "__main__":
    absltest.main()
