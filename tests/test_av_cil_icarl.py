"""iCaRL on AV-CIL's problem (``problems/av_cil/strategies/icarl.py``) against numpy
transcriptions of the authors' code [AVCIL-code iCaRL/train_incremental_icarl.py], with the
model's NME head (``heads``) and the herded memory.

The helpers (a stub problem around ``AVCILNet``, a task context over an in-memory clip table,
a state) are shared with ``test_av_cil_afc.py``.

Tolerances: float32 JAX against float64 numpy, reductions over n <= 256 terms of O(1)
values: rtol = 1e-5 · sqrt(n) (float32's 6e-8 rounding, accumulated as a random walk, with
a margin), atol = 1e-6 for values that may be 0.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from absl.testing import absltest

from jax_cavs.cl import selection
from jax_cavs.core import optim, steps
from jax_cavs.core import strategy as base
from jax_cavs.core.problem import Outputs
from jax_cavs.core.state import create_state
from jax_cavs.problems.av_cil import heads, losses
from jax_cavs.problems.av_cil.model import AVCILNet
from jax_cavs.problems.av_cil.strategies import icarl

K, DA, DV, FRAMES, PATCHES = 4, 3, 4, 2, 3
ATOL = 1e-6


def rtol(n: int) -> float:
    return 1e-5 * np.sqrt(n)


# -- shared helpers ------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _init_fn(model: AVCILNet):
    return jax.jit(lambda rng: model.init(rng, jnp.zeros((1, DA)),
                                          jnp.zeros((1, FRAMES * PATCHES, DV))))


@functools.lru_cache(maxsize=None)
def _apply_fn(model: AVCILNet):
    return jax.jit(lambda params, audio, visual: model.apply({"params": params}, audio, visual))


class StubProblem:
    """The part of ``AVCILProblem`` strategies use, around an ``AVCILNet``."""

    def __init__(self, model: AVCILNet):
        self.model = model

    def init(self, seed: int = 0):
        return _init_fn(self.model)(jax.random.key(seed))

    def apply(self, variables, batch, *, train, drop=frozenset()):
        logits, features = _apply_fn(self.model)(variables["params"], batch["audio"],
                                                 batch["visual"])
        return Outputs(logits, features), ({} if train else None)

    def loss(self, outputs, batch, classes, labels=None):
        return losses.masked_ce(outputs.logits, batch["label"], classes, batch["valid"])

    def param_roles(self):
        return {"classifier": (r"^classifier/",), "norm": (), "frozen": (r"^nme/",)}


def clip_table(labels, seed=0):
    """Random clips of the given labels: {"audio", "visual", "label"} numpy arrays."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    return {"audio": rng.normal(size=(n, DA)).astype(np.float32),
            "visual": rng.normal(size=(n, FRAMES * PATCHES, DV)).astype(np.float32),
            "label": np.asarray(labels, np.int32)}


def batches_of(table, batch_size=4):
    """``TaskContext.batches``: eval batches over records, the last padded (valid = 0)."""
    def batches(indices, labels="current"):
        indices = np.asarray(indices, np.int64)
        for start in range(0, len(indices), batch_size):
            part = indices[start:start + batch_size]
            pad = np.concatenate([part, np.repeat(part[:1], batch_size - len(part))])
            batch = {k: v[pad] for k, v in table.items()}
            batch["index"] = pad
            batch["valid"] = (np.arange(batch_size) < len(part)).astype(np.float32)
            batch["is_memory"] = np.zeros((batch_size,), np.float32)
            yield batch
    return batches


def task_info(index, tasks):
    """TaskInfo of task ``index`` of ``tasks`` (tuples of classes) over K classes."""
    def mask(classes):
        m = np.zeros((K,), bool)
        m[list(classes)] = True
        return m
    old = [c for t in tasks[:index] for c in t]
    return base.TaskInfo(index=index, num_tasks=len(tasks), classes=tuple(tasks[index]),
                         current=mask(tasks[index]), old=mask(old),
                         seen=mask(old + list(tasks[index])))


def context(problem, table, info, seed=0):
    train = np.flatnonzero(np.isin(table["label"], info.classes))
    return base.TaskContext(
        task=info, train_indices=train, batches=batches_of(table),
        device_batch=lambda b: {k: jnp.asarray(v) for k, v in b.items()}, forward=None,
        problem=problem, workdir="", rng=np.random.default_rng(seed))


def make_state(problem, strategy, variables, info):
    tx = optim.build_optimizer(ml_collections.ConfigDict(dict(
        name="adam", lr=1e-2, weight_decay=1e-4, grad_clip=0.0)),
        problem.param_roles()["frozen"])
    state = create_state(variables, tx, K, strategy.memory_capacity(K), False,
                         strategy.init_extras(K), has_background=False)
    return strategy.begin_task(state, info)


def model_features(problem, params, table, ids):
    """Numpy φ = normalised fused features of records ``ids`` (float64)."""
    out, _ = problem.apply({"params": params}, {k: jnp.asarray(v[ids]) for k, v in
                                                 table.items()}, train=False)
    f = np.asarray(out.features["fused"], np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def authors_herding(features, m):
    """Transcription of ``gen_step_exemplar_set`` l. 113-126 (numpy argmin, repeats)."""
    mean, now, picks = features.mean(axis=0), np.zeros((1, features.shape[1])), []
    for i in range(m):
        if i >= len(features):
            break
        x = np.linalg.norm(mean - (now + features) / (i + 1), axis=1)
        index = int(np.argmin(x))
        now += features[index]
        picks.append(index)
    return picks


# -- tests ---------------------------------------------------------------------------------
class ICaRLLossTest(absltest.TestCase):

    def test_distillation_and_ce_match_the_code(self):
        rng = np.random.default_rng(1)
        n = 6
        student = rng.normal(size=(n, K)).astype(np.float32) * 3
        teacher = rng.normal(size=(n, K)).astype(np.float32) * 3
        labels = np.array([2, 2, 0, 1, 2, 1], np.int32)
        weights = np.array([1, 1, 1, 1, 1, 0], np.float32)  # the last row is padding
        old = np.array([True, True, False, False])
        seen = np.array([True, True, True, False])  # class 3 not seen yet
        # iCaRL_loss l. 55-62 on the real rows, old classes = the first two columns.
        sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
        x, y = sig(np.float64(student[:5, :2])), sig(np.float64(teacher[:5, :2]))
        ref_kd = np.mean(-(y * np.log(sig(x)) + (1 - y) * np.log(1 - sig(x))))
        z = np.float64(student[:5, :3])
        logp = z - z.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        ref_ce = -np.mean(logp[np.arange(5), labels[:5]])

        kd = icarl.icarl_distillation(jnp.asarray(student), jnp.asarray(teacher),
                                      jnp.asarray(old), jnp.asarray(weights))
        np.testing.assert_allclose(kd, ref_kd, rtol=rtol(10))

        problem = StubProblem(AVCILNet(K, modality="audio", dim=8))
        strategy = icarl.ICaRL(problem=problem)
        state = make_state(problem, strategy, problem.init(), task_info(0, [(0, 1), (2,)]))
        batch = {"label": jnp.asarray(labels), "valid": jnp.asarray(weights)}
        outputs = lambda z: Outputs(jnp.asarray(z), {})  # noqa: E731
        for task, want in ((0, ref_ce), (1, ref_ce + ref_kd)):
            state = state.replace(task=jnp.asarray(task), seen=jnp.asarray(seen),
                                  old=jnp.asarray(old & (task > 0)))
            total, terms = strategy.loss(state, batch, outputs(student), outputs(teacher), None)
            np.testing.assert_allclose(total, want, rtol=rtol(15))
            self.assertEqual(float(terms["kd"]) == 0.0, task == 0)


class HerdingTest(absltest.TestCase):

    def test_with_replacement_hand_derived(self):
        # 1-D features 0, 3, 10: μ = 13/3.
        # k=1: |μ − φ| = 4.33, 1.33, 5.67                       -> row 1
        # k=2: |μ − (3 + φ)/2| = 2.83, 1.33, 2.17               -> row 1 again
        # k=3: |μ − (6 + φ)/3| = 2.33, 1.33, 1.00               -> row 2
        # then no more than n = 3 picks (the code pads with None).
        features = np.array([[0.0], [3.0], [10.0]])
        np.testing.assert_array_equal(icarl.herding_with_replacement(features, 5), [1, 1, 2])
        np.testing.assert_array_equal(icarl.herding_with_replacement(features, 2), [1, 1])
        self.assertEqual(icarl.herding_with_replacement(features[:0], 3).size, 0)


class NearestMeanTest(absltest.TestCase):

    def test_scores_hand_computed(self):
        # x̂ = (3, 4)/5 = (0.6, 0.8); ‖x̂ − μ‖ = 0, √(0.36 + 0.04), √(0.16 + 0.64).
        means = jnp.array([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
        scores = heads.nme_scores(jnp.array([[3.0, 4.0]]), means)
        np.testing.assert_allclose(scores, [[0.0, -np.sqrt(0.4), -np.sqrt(0.8)]],
                                   rtol=rtol(2), atol=ATOL)

    def test_model_heads_keep_the_default_params(self):
        problem = StubProblem(AVCILNet(K, modality="audio-visual", dim=8, num_frames=FRAMES))
        default = problem.init()["params"]
        self.assertEqual(sorted(default), ["attention", "audio_proj", "classifier",
                                           "visual_proj"])
        self.assertEqual(sorted(default["classifier"]), ["bias", "kernel"])
        nme = StubProblem(dataclasses.replace(problem.model, nme=True)).init()["params"]
        self.assertEqual(nme["nme"]["class_means"].shape, (K, 8))
        lsc = StubProblem(dataclasses.replace(problem.model, head="lsc")).init()["params"]
        self.assertEqual(lsc["classifier"]["proxies"].shape, (8, heads.LSC_PROXIES, K))
        self.assertEqual(lsc["classifier"]["factor"].shape, ())


class MemoryAndMeansTest(absltest.TestCase):
    """Two tasks of two classes, 6 clips each, |M| = 8: m = 4 after the first, 2 after the
    second, the old classes keeping their first 2 picks."""

    def setUp(self):
        self.tasks = [(0, 1), (2, 3)]
        self.table = clip_table(np.repeat(np.arange(K), 6), seed=3)
        self.problem = StubProblem(AVCILNet(K, modality="audio", dim=8, nme=True))
        self.strategy = icarl.ICaRL(memory_size=8, problem=self.problem)

    def expected(self, params, chosen_before, info, m):
        ids = np.arange(len(self.table["label"]))
        phi = model_features(self.problem, params, self.table, ids)
        chosen = {c: list(chosen_before[c][:m]) for c in np.flatnonzero(info.old)}
        for c in info.classes:
            members = np.flatnonzero(self.table["label"] == c)
            chosen[c] = [int(members[i]) for i in authors_herding(phi[members], m)]
        means = np.zeros((K, phi.shape[1]))
        for c, picks in chosen.items():
            means[c] = phi[picks].mean(axis=0)
        return chosen, means

    def test_end_task_and_before_validation(self):
        info0, info1 = task_info(0, self.tasks), task_info(1, self.tasks)
        state = make_state(self.problem, self.strategy, self.problem.init(), info0)
        state = self.strategy.end_task(state, context(self.problem, self.table, info0))
        chosen0, means0 = self.expected(state.params, {}, info0, 4)
        for c in (0, 1):
            np.testing.assert_array_equal(state.memory.ids_of_class(c), chosen0[c])
        self.assertLen(state.memory.record_ids(), 8)  # one slot per pick, repeats included
        self.assertLess(len(set(chosen0[1])), 4)  # this draw repeats a clip of class 1
        np.testing.assert_allclose(state.params["nme"]["class_means"], means0,
                                   rtol=rtol(6), atol=ATOL)

        # The second task, after some "training": other weights, the same memory.
        state = self.strategy.begin_task(state, info1)
        moved = jax.tree_util.tree_map(lambda p: p * 1.5 + 0.1, state.params)
        state = state.replace(params=moved)
        ctx1 = context(self.problem, self.table, info1)
        chosen1, means1 = self.expected(state.params, chosen0, info1, 2)
        validated = self.strategy.before_validation(state, ctx1)
        np.testing.assert_allclose(validated.params["nme"]["class_means"], means1,
                                   rtol=rtol(6), atol=ATOL)
        np.testing.assert_array_equal(validated.memory.ids, state.memory.ids)
        state = self.strategy.end_task(state, ctx1)
        for c in range(K):
            np.testing.assert_array_equal(state.memory.ids_of_class(c), chosen1[c])
        np.testing.assert_allclose(state.params["nme"]["class_means"], means1,
                                   rtol=rtol(6), atol=ATOL)
        # The NME logits the evaluator scores: −‖φ − μ_c‖.
        out, _ = self.problem.apply({"params": state.params},
                                    {k: jnp.asarray(v) for k, v in self.table.items()},
                                    train=False)
        phi = model_features(self.problem, state.params, self.table, np.arange(24))
        ref = -np.linalg.norm(phi[:, None] - means1[None], axis=-1)
        np.testing.assert_allclose(out.features["nme_logits"], ref, rtol=rtol(8), atol=ATOL)

    def test_distinct_herding(self):
        """``herding_with_replacement=False``: iCaRL's distinct picks (``cl.selection``)."""
        info = task_info(0, self.tasks)
        strategy = icarl.ICaRL(memory_size=8, herding_with_replacement=False,
                               problem=self.problem)
        state = make_state(self.problem, strategy, self.problem.init(), info)
        state = strategy.end_task(state, context(self.problem, self.table, info))
        phi = model_features(self.problem, state.params, self.table, np.arange(24))
        for c in (0, 1):
            members = np.arange(6 * c, 6 * c + 6)
            np.testing.assert_array_equal(state.memory.ids_of_class(c),
                                          members[selection.herding_order(phi[members], 4)])

    def test_train_step_leaves_the_class_means(self):
        """The "frozen" role: weight decay does not move the means during training."""
        info = task_info(1, self.tasks)
        state = make_state(self.problem, self.strategy, self.problem.init(), info)
        means = jnp.arange(K * 8, dtype=jnp.float32).reshape(K, 8) / 10
        state = self.strategy.with_class_means(state, means)
        batch = {k: jnp.asarray(v[:8]) for k, v in self.table.items()}
        batch.update(valid=jnp.ones((8,)), is_memory=jnp.zeros((8,)),
                     index=jnp.arange(8))
        step = jax.jit(steps.make_train_step(self.problem, self.strategy))
        new, metrics = step(state, batch, jax.random.key(0))
        np.testing.assert_array_equal(new.params["nme"]["class_means"], means)
        self.assertTrue(np.isfinite(float(metrics["loss"])))
        self.assertFalse(np.allclose(new.params["audio_proj"]["kernel"],
                                     state.params["audio_proj"]["kernel"]))


if __name__ == "__main__":
    absltest.main()
