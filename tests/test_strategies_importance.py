"""EWC / SI / MAS strategies vs independent computations; the replay memory selection, which
shares this module's tiny model and task helpers, is tested in test_strategies_replay.py.

Reference values are either derived by hand (SI's path integral) or computed
directly from the formula with a hand-written forward pass of the tiny model below (EWC's
Fisher, MAS's sensitivity), never through the strategy code. The toy models are served to the
strategies by ``CAVSProblem(model)`` (apply, loss and weights, no dataset).

Tolerances (float32): hand-derived values involve a handful of O(1) operations, rtol = 1e-6
(a few ulps), except where θ_end − θ_start cancels (relative error up to ~1e-6 on O(0.3)
differences of O(1) values, amplified by squaring): rtol = 1e-5. Gradients of the tiny model
are sums over at most 2·2·4·4 = 64 pixels in a different order than the reference (error
≲ 64·eps ≈ 8e-6 relative, doubled by squaring): rtol = 1e-4, with atol = 1e-7 for entries that
cancel to ~0.
"""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from jax_cavs.core import steps as train_lib
from jax_cavs.core.state import create_state
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.ewc import EWC
from jax_cavs.cl.strategies.mas import MAS
from jax_cavs.cl.strategies.si import SI
from jax_cavs.problems.cavs.problem import CAVSProblem

NUM_CLASSES = 4
HIDDEN = 3


class TinySegmenter(nn.Module):
    """logits = relu(frames · W_body + b_body) · W_head + b_head per pixel (AVSModel's call)."""

    num_classes: int = NUM_CLASSES
    freeze_audio: bool = False  # read by CAVSProblem.param_roles

    @nn.compact
    def __call__(self, frames, audio, frame_mask, *, train):
        self.variable("batch_stats", "unused", jnp.zeros, ())
        hidden = nn.relu(nn.Dense(HIDDEN, name="body")(frames))
        logits = nn.Dense(NUM_CLASSES, name="head")(hidden)
        n, t, h, w, _ = frames.shape
        return logits, {"decoder": hidden.reshape(n * t, h, w, HIDDEN)}


TINY = CAVSProblem(TinySegmenter())


def reference_logits(params, frames):
    body, head = params["body"], params["head"]
    return jnp.maximum(frames @ body["kernel"] + body["bias"], 0.0) @ head["kernel"] \
        + head["bias"]


def make_batch(rng, clips=2, valid=None, t=2, size=4):
    labels = rng.choice([0, 1, 2, 255], size=(clips, t, size, size)).astype(np.int32)
    return {"frames": rng.standard_normal((clips, t, size, size, 3)).astype(np.float32),
            "audio": np.zeros((clips, t, 1), np.float32),
            "labels": labels,
            "label_mask": np.array([[1.0, 0.0]] * clips, np.float32),
            "frame_mask": np.ones((clips, t), np.float32),
            "index": np.arange(clips, dtype=np.int32),
            "is_memory": np.zeros((clips,), bool),
            "valid": np.ones((clips,), np.float32) if valid is None
            else np.asarray(valid, np.float32)}


def task_info(index, classes, seen):
    current = np.zeros(NUM_CLASSES, bool)
    current[list(classes)] = True
    seen_mask = np.zeros(NUM_CLASSES, bool)
    seen_mask[list(seen)] = True
    return base.TaskInfo(index=index, num_tasks=2, classes=tuple(classes), current=current,
                         old=seen_mask & ~current, seen=seen_mask)


def make_context(info, batches, workdir=None, seed=0):
    num_clips = int(sum(np.sum(b["valid"]) for b in batches))
    return base.TaskContext(
        task=info, train_indices=np.arange(num_clips),
        batches=lambda indices, labels="current": iter(batches),
        device_batch=lambda b: {k: jnp.asarray(v) for k, v in b.items()},
        forward=None, problem=TINY, workdir=workdir, rng=np.random.default_rng(seed))


def tiny_state(strategy, info, seed=0, lr=0.1, capacity=0):
    variables = TINY.model.init(jax.random.key(seed), jnp.zeros((1, 2, 4, 4, 3)),
                                jnp.zeros((1, 2, 1)), jnp.ones((1, 2)), train=False)
    state = create_state(variables, optax.sgd(lr), NUM_CLASSES, capacity,
                         strategy.uses_importance, {})
    return strategy.begin_task(state, info)


def tree_of(params, value_fn):
    return jax.tree_util.tree_map(value_fn, params)


# ----------------------------------------------------------------------------------------
# The shared quadratic penalty.


class PenaltyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((EWC, 3.0, 0.5), (SI, 3.0, 1.0), (MAS, 2.0, 0.5))
    def test_zero_at_anchor_and_hand_value_off_it(self, cls, lam, c):
        strategy = cls(lam=lam, c=c, exclude=(), problem=TINY)
        state = tiny_state(strategy, task_info(1, (2,), (0, 1, 2)))
        anchor = tree_of(state.params, lambda p: jnp.full_like(p, 0.5))
        importance = tree_of(state.params, lambda p: jnp.full_like(p, 2.0))
        importance["head"]["bias"] = jnp.array([0.0, 1.0, 4.0, 0.0])
        state = state.replace(anchor=anchor, importance=importance)
        penalty = self.variant(strategy.penalty)
        chex.assert_trees_all_close(penalty(anchor, state), jnp.float32(0.0), atol=0.0)
        # θ = θ* + 1 on body/kernel (3·3 = 9 entries, Ω = 2) and θ* + 0.5 on head/bias
        # (Ω = 0, 1, 4, 0): Σ Ω δ² = 9·2·1 + (1 + 4)·0.25 = 19.25.
        moved = jax.tree_util.tree_map(jnp.copy, anchor)
        moved["body"]["kernel"] = anchor["body"]["kernel"] + 1.0
        moved["head"]["bias"] = anchor["head"]["bias"] + 0.5
        chex.assert_trees_all_close(penalty(moved, state), jnp.float32(lam * c * 19.25),
                                    rtol=1e-6)

    @parameterized.parameters(EWC, SI, MAS)
    def test_excluded_parameters_get_zero_penalty_gradient(self, cls):
        strategy = cls(lam=1.0, exclude=(r"^head/",), problem=TINY)
        info = task_info(0, (1, 2), (0, 1, 2))
        state = tiny_state(strategy, info)
        state = state.replace(path_integral=tree_of(state.params, jnp.ones_like))  # for SI
        batches = [make_batch(np.random.default_rng(1))]
        state = strategy.end_task(state, make_context(info, batches))
        moved = tree_of(state.params, lambda p: p + 0.25)
        grads = jax.grad(strategy.penalty)(moved, state)
        chex.assert_trees_all_equal(grads["head"], tree_of(grads["head"], jnp.zeros_like))
        self.assertGreater(float(jnp.sum(jnp.abs(grads["body"]["kernel"]))), 0.0)


# ----------------------------------------------------------------------------------------
# SI: the path integral through the real train step.


class RolesProblem(CAVSProblem):
    """TINY with roles of its own: the head is the classifier, the body an adapter."""

    def param_roles(self):
        return {"classifier": (r"^head/",), "norm": (), "adapter": (r"^body/",)}


class RolesTest(parameterized.TestCase):

    @parameterized.parameters(
        ({}, "body"),                                                  # default: head free
        ({"exclude_roles": ("norm",)}, "body head"),                   # head regularised too
        ({"include_roles": ("adapter",), "exclude_roles": ()}, "body"),
        ({"include": (r"/bias$",), "exclude_roles": ()}, "body/bias head/bias"),
        ({"include_roles": ("adapter",), "include": (r"^head/bias",)}, "body"),  # head out
        ({"exclude": (r"^body/",), "exclude_roles": ()}, "head"))
    def test_roles_choose_the_regularised_leaves(self, fields, regularised):
        strategy = EWC(problem=RolesProblem(TinySegmenter()), **fields)
        state = tiny_state(strategy, task_info(0, (1, 2), (0, 1, 2)))
        ones = tree_of(state.params, jnp.ones_like)
        importance = strategy.consolidated(state, ones, state.params).importance
        for module, leaves in importance.items():
            for name, leaf in leaves.items():
                kept = module in regularised.split() or f"{module}/{name}" in regularised.split()
                np.testing.assert_array_equal(leaf, np.full(leaf.shape, float(kept)),
                                              err_msg=f"{module}/{name} with {fields}")

    def test_an_undeclared_role_is_named_with_the_declared_ones(self):
        with self.assertRaisesRegex(ValueError, r"strategy.exclude_roles.*'lora'.*"
                                                r"\['adapter', 'classifier', 'norm'\]"):
            EWC(problem=RolesProblem(TinySegmenter()), exclude_roles=("lora",))


class TwoParameters(nn.Module):
    """'logits' = θ ∈ R², so the strategy below can write the loss as a function of θ."""

    num_classes: int = 2
    freeze_audio: bool = False  # read by CAVSProblem.param_roles

    @nn.compact
    def __call__(self, frames, audio, frame_mask, *, train):
        self.variable("batch_stats", "unused", jnp.zeros, ())
        return self.param("w", lambda key: jnp.array([1.0, 2.0])), {}


@dataclasses.dataclass(frozen=True)
class QuadraticSI(SI):
    """SI with the task loss L(θ) = θ₁² + 3·θ₂ (∇L = (2θ₁, 3))."""

    def loss(self, state, batch, student, teacher, rng):
        theta = student.logits
        value = theta[0] ** 2 + 3.0 * theta[1]
        return value, {"task": value}


class SITest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_path_integral_and_consolidation_by_hand(self):
        problem = CAVSProblem(TwoParameters())
        strategy = QuadraticSI(lam=1.0, c=1.0, xi=0.1, exclude=(), problem=problem)
        variables = problem.model.init(jax.random.key(0), None, None, None, train=False)
        state = create_state(variables, optax.sgd(0.1), 2, 0, True, {})
        # Task 1: anchor θ* = θ₀ = (1, 2), Ω = (0.5, 2); penalty Σ Ω (θ − θ*)².
        state = state.replace(task=jnp.int32(1), importance={"w": jnp.array([0.5, 2.0])},
                              anchor={"w": jnp.array([1.0, 2.0])})
        step = self.variant(train_lib.make_train_step(problem, strategy))
        batch = {"frames": jnp.zeros(1), "audio": jnp.zeros(1), "frame_mask": jnp.zeros(1)}
        # Step 1 at θ₀: ∇L = (2, 3), penalty gradient 0; θ₁ = θ₀ − 0.1·(2, 3) = (0.8, 1.7);
        # ω = −∇L·Δθ = (2·0.2, 3·0.3) = (0.4, 0.9).
        state, _ = step(state, batch, jax.random.key(0))
        chex.assert_trees_all_close(state.params["w"], jnp.array([0.8, 1.7]), rtol=1e-6)
        chex.assert_trees_all_close(state.path_integral["w"], jnp.array([0.4, 0.9]),
                                    rtol=1e-6)
        # Step 2 at θ₁: ∇L = (1.6, 3); penalty gradient 2·Ω·(θ₁ − θ*) = (−0.2, −1.2), so the
        # total gradient is (1.4, 1.8) and θ₂ = (0.66, 1.52), Δθ = (−0.14, −0.18). ω adds
        # −∇L·Δθ (the unregularised gradient) = (1.6·0.14, 3·0.18) = (0.224, 0.54).
        state, _ = step(state, batch, jax.random.key(1))
        chex.assert_trees_all_close(state.params["w"], jnp.array([0.66, 1.52]), rtol=1e-6)
        omega = np.array([0.4 + 0.224, 0.9 + 0.54])
        chex.assert_trees_all_close(state.path_integral["w"], jnp.asarray(omega, jnp.float32),
                                    rtol=1e-6)
        # End of task: Ω += ω / ((θ₂ − θ₀)² + ξ) with θ₂ − θ₀ = (−0.34, −0.48), ω reset,
        # anchor ← θ₂.
        state = strategy.end_task(state, None)
        expected = np.array([0.5, 2.0]) + omega / (np.array([0.34, 0.48]) ** 2 + 0.1)
        chex.assert_trees_all_close(state.importance["w"], jnp.asarray(expected, jnp.float32),
                                    rtol=1e-5)
        chex.assert_trees_all_equal(state.path_integral["w"], jnp.zeros(2))
        chex.assert_trees_all_equal(state.anchor["w"], state.params["w"])
        # The anchor is a copy: the experiment's step donates the whole state, which fails
        # when two leaves share a buffer.
        donating = jax.jit(train_lib.make_train_step(problem, strategy), donate_argnums=0)
        state, _ = donating(state, batch, jax.random.key(2))
        chex.assert_trees_all_close(state.params["w"], jnp.array([0.66 - 0.132, 1.52 - 0.3]),
                                    rtol=1e-6)


# ----------------------------------------------------------------------------------------
# EWC's Fisher and MAS's sensitivity vs direct evaluations of their formulas.


def _two_batches():
    rng = np.random.default_rng(7)
    first = make_batch(rng)
    first["labels"][0, 0, 0, :2] = 255   # ignored pixels on an annotated frame
    second = make_batch(rng, valid=[1.0, 0.0])  # the padding clip of the last batch
    return [first, second]


def reference_ce(params, batch, seen):
    """Mean CE over the seen classes; ignored pixels count in the denominator (masked_mean)."""
    logits = jnp.where(seen, reference_logits(params, batch["frames"]), -jnp.inf)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    labels = batch["labels"]
    valid_pixel = labels != 255
    picked = jnp.take_along_axis(log_probs, jnp.where(valid_pixel, labels, 0)[..., None],
                                 axis=-1)[..., 0]
    weights = jnp.broadcast_to((batch["label_mask"] * batch["valid"][:, None])[..., None, None],
                               labels.shape)
    return -jnp.sum(jnp.where(valid_pixel, picked, 0.0) * weights) / jnp.sum(weights)


def reference_output_norm_sum(params, batch, seen):
    """Σ over real clips of ‖seen-class logits of the clip‖₂."""
    logits = reference_logits(params, batch["frames"])[..., np.asarray(seen)]
    norms = jnp.sqrt(jnp.sum(logits.reshape(logits.shape[0], -1) ** 2, axis=1))
    return jnp.sum(norms * batch["valid"])


class ImportanceTest(absltest.TestCase):

    def setUp(self):
        super().setUp()
        self.info = task_info(0, (1, 2), (0, 1, 2))  # class 3 unseen
        self.seen = jnp.asarray(self.info.seen)
        self.batches = _two_batches()

    def test_ewc_fisher_is_mean_of_squared_batch_gradients(self):
        strategy = EWC(exclude=(), problem=TINY)
        state = tiny_state(strategy, self.info)
        got = strategy.fisher(state, make_context(self.info, self.batches))
        grads = [jax.grad(reference_ce)(state.params, jax.tree_util.tree_map(jnp.asarray, b),
                                        self.seen) for b in self.batches]
        expected = jax.tree_util.tree_map(lambda a, b: (a ** 2 + b ** 2) / 2, *grads)
        chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-7)
        self.assertGreater(float(jnp.max(expected["body"]["kernel"])), 1e-4)
        # Online consolidation of the first task: Ω = F, θ* = θ_end.
        state = strategy.end_task(state, make_context(self.info, self.batches))
        chex.assert_trees_all_close(state.importance, expected, rtol=1e-4, atol=1e-7)
        chex.assert_trees_all_equal(state.anchor, state.params)

    def test_mas_sensitivity_is_abs_gradient_of_output_norm(self):
        strategy = MAS(exclude=(), problem=TINY)
        state = tiny_state(strategy, self.info)
        got = strategy.sensitivity(state, make_context(self.info, self.batches))
        grads = [jax.grad(reference_output_norm_sum)(
            state.params, jax.tree_util.tree_map(jnp.asarray, b), self.seen)
            for b in self.batches]
        num_clips = 3
        expected = jax.tree_util.tree_map(lambda a, b: (jnp.abs(a) + jnp.abs(b)) / num_clips,
                                          *grads)
        chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-7)
        # The unseen class's head column takes no part in f.
        chex.assert_trees_all_equal(got["head"]["kernel"][:, 3], jnp.zeros(HIDDEN))
        # FACIL merge of the first task: Ω = (1 − α)·Ω_new.
        state = strategy.end_task(state, make_context(self.info, self.batches))
        chex.assert_trees_all_close(state.importance,
                                    tree_of(expected, lambda x: 0.5 * x), rtol=1e-4, atol=1e-7)


if __name__ == "__main__":
    absltest.main()
