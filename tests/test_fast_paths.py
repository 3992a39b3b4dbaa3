"""The fast paths keep the math: the project's XLA options reach every jit, and each rewritten
piece (matrix upsampling, select-based class gather, neck taps that read only padding, frozen
leaves as constants) equals the plain formulation it replaces, values and gradients.

The plain formulations are written here (a gather-pair upsample, ``take_along_axis``, the
full dilated ``nn.Conv``): they are what the model computed before, so these tests say the
fast paths change rounding at most. Tolerances: a few float32 ulps of O(1) values
(``EPS = finfo(float32).eps``) times the number of summed terms.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from jax_cavs.core import optim, steps, xla
from jax_cavs.core import strategy as base_strategy
from jax_cavs.core.state import create_state
from jax_cavs.models.heads import upsample
from jax_cavs.models.heads.neck import PaddingAwareConv3x3
from jax_cavs.models.initializers import normal_init, torch_default_bias_init
from jax_cavs.problems.cavs.losses import segmentation

EPS = float(jnp.finfo(jnp.float32).eps)


def _conv_grad(x, w):
    def loss(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y) ** 2)
    return jax.grad(loss, argnums=(0, 1))(x, w)


def _ynn_fusions(jitted) -> int:
    x, w = jnp.ones((2, 32, 32, 32)), jnp.ones((3, 3, 32, 32))
    return jitted.lower(x, w).compile().as_text().count("__ynn_fusion")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the defaults are CPU options")
def test_cpu_jits_compile_convolutions_without_ynnpack(monkeypatch):
    monkeypatch.delenv(xla.ENV, raising=False)
    assert _ynn_fusions(jax.jit(_conv_grad)) > 0, "XLA's own choice uses YNNPACK here"
    assert _ynn_fusions(xla.jit(_conv_grad)) == 0
    monkeypatch.setenv(xla.ENV, '{"xla_cpu_experimental_ynn_fusion_type": null}')
    assert xla.compiler_options() == {}
    assert _ynn_fusions(xla.jit(_conv_grad)) > 0


def test_options_override_and_bad_override(monkeypatch):
    monkeypatch.setenv(xla.ENV, '{"xla_cpu_enable_fast_math": false}')
    options = xla.compiler_options("cpu")
    assert options["xla_cpu_enable_fast_math"] is False
    assert options["xla_cpu_experimental_ynn_fusion_type"] == "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    assert xla.compiler_options("gpu") == {"xla_cpu_enable_fast_math": False}
    monkeypatch.setenv(xla.ENV, "ynn=off")
    with pytest.raises(ValueError, match=f"environment variable {xla.ENV}='ynn=off' is not JSON"):
        xla.compiler_options("cpu")


def test_decorator_forms_and_lazy_backend():
    @xla.jit(static_argnames=("power",))
    def f(x, power):
        return x ** power

    assert float(f(jnp.float32(3.0), power=2)) == 9.0
    assert float(xla.jit(lambda x: x + 1)(jnp.float32(1.0))) == 2.0
    assert f.__name__ == "f"


# -- upsampling ------------------------------------------------------------------------------

def _gather_pair_resize(x, axis, out_size):
    """The replaced form: gather floor(src) and floor(src)+1, blend (1-λ)·x0 + λ·x1."""
    in_size = x.shape[axis]
    src = (np.arange(out_size) * ((in_size - 1) / (out_size - 1)) if out_size > 1
           else np.zeros(1))
    lower = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = jnp.asarray((src - lower).reshape(shape), x.dtype)
    return (1 - frac) * jnp.take(x, lower, axis=axis) + frac * jnp.take(x, upper, axis=axis)


@pytest.mark.parametrize("in_hw,out_hw", [((7, 7), (14, 14)), ((3, 5), (6, 10)), ((4, 5), (1, 3))])
def test_matrix_upsampling_equals_the_gather_pair_with_gradients(in_hw, out_hw):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *in_hw, 3)), jnp.float32)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(2, *out_hw, 3)), jnp.float32)

    def gather(x):
        return _gather_pair_resize(_gather_pair_resize(x, 1, out_hw[0]), 2, out_hw[1])

    def matrix(x):
        return upsample.resize_bilinear_align_corners(x, out_hw)

    chex.assert_trees_all_close(matrix(x), gather(x), rtol=0, atol=8 * EPS)
    # The backward sums up to ~2·out/in cotangent terms per input pixel, each O(1).
    grad = lambda f: jax.vjp(f, x)[1](cotangent)[0]
    bound = 4 * EPS * (2 * max(out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]) + 1) ** 2
    chex.assert_trees_all_close(grad(matrix), grad(gather), rtol=0, atol=bound)


def test_align_corners_matrix_rows_are_two_tap_blends():
    matrix = upsample.align_corners_matrix(3, 5)           # src = 0, 0.5, 1, 1.5, 2
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5],
                                           [0, 0, 1]])
    np.testing.assert_array_equal(upsample.align_corners_matrix(4, 1), [[1, 0, 0, 0]])


# -- the class gather of the segmentation losses ----------------------------------------------

def test_select_gather_equals_take_along_axis_with_gradients():
    rng = np.random.default_rng(2)
    values = jnp.asarray(rng.normal(size=(2, 6, 5, 7)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 7, (2, 6, 5)), jnp.int32)
    take = lambda v: jnp.take_along_axis(v, labels[..., None], axis=-1)[..., 0]
    select = lambda v: segmentation._gather_class(v, labels)
    np.testing.assert_array_equal(select(values), take(values))       # one non-zero term
    weights = jnp.asarray(rng.normal(size=labels.shape), jnp.float32)
    grad = lambda f: jax.grad(lambda v: jnp.sum(weights * f(v)))(values)
    np.testing.assert_array_equal(grad(select), grad(take))


# -- neck taps that read only padding ---------------------------------------------------------

@pytest.mark.parametrize("hw,dilation", [((7, 7), 12), ((7, 7), 7), ((7, 7), 6), ((4, 9), 6),
                                         ((9, 4), 6), ((2, 2), 18)])
def test_padding_aware_conv_equals_the_full_dilated_conv(hw, dilation):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, *hw, 8)), jnp.float32)
    bias_init = torch_default_bias_init(9 * 8)
    full = nn.Conv(16, (3, 3), kernel_dilation=(dilation, dilation),
                   padding=((dilation, dilation), (dilation, dilation)),
                   kernel_init=normal_init(0.01), bias_init=bias_init)
    fast = PaddingAwareConv3x3(16, dilation, normal_init(0.01), bias_init)
    variables = full.init(jax.random.key(0), x)
    chex.assert_trees_all_equal(fast.init(jax.random.key(0), x), variables)  # same init
    variables = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape), v.dtype),
                                       variables)
    # 9·8 products of O(1) terms summed in another order at most.
    bound = 4 * EPS * 9 * 8
    chex.assert_trees_all_close(fast.apply(variables, x), full.apply(variables, x), rtol=0,
                                atol=bound)
    grads = lambda m: jax.grad(lambda v: jnp.sum(jnp.sin(m.apply(v, x))))(variables)
    chex.assert_trees_all_close(grads(fast), grads(full), rtol=0, atol=bound * x.size / 8)


# -- frozen leaves as constants ---------------------------------------------------------------

class _Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        for index in range(3):
            x = jnp.tanh(nn.Dense(64, name=f"encoder_{index}")(x))
        return nn.Dense(4, name="head")(x)


class _Problem:
    """What the train step asks of a problem: roles and a forward."""

    def __init__(self, frozen):
        self.model, self.frozen = _Encoder(), frozen

    def param_roles(self):
        return {"classifier": (), "frozen": self.frozen}

    def apply(self, variables, batch, train, drop):
        return {"logits": self.model.apply({"params": variables["params"]}, batch["x"])}, {}


class _SquaredOutput(base_strategy.Strategy):
    def loss(self, state, batch, student, teacher, rng):
        return jnp.mean(student["logits"] ** 2), {}


def _one_step(frozen):
    problem = _Problem(frozen)
    batch = {"x": jnp.asarray(np.random.default_rng(4).normal(size=(8, 32)), jnp.float32)}
    variables = problem.model.init(jax.random.key(0), batch["x"])
    config = ml_collections.ConfigDict(dict(name="adam", lr=1e-2, weight_decay=0.0,
                                            grad_clip=0.0))
    state = create_state(variables, optim.build_optimizer(config, frozen), 4, 0, False, {})
    step = xla.jit(steps.make_train_step(problem, _SquaredOutput()))
    flops = step.lower(state, batch, jax.random.key(0)).compile().cost_analysis()["flops"]
    new_state, metrics = step(state, batch, jax.random.key(0))
    return state, new_state, metrics, flops, problem, batch


def test_frozen_leaves_get_no_gradient_and_no_backward_pass():
    frozen = ("encoder_",)
    state, new_state, metrics, flops, problem, batch = _one_step(frozen)
    _, free_state, _, free_flops, _, _ = _one_step(())
    for name in ("encoder_0", "encoder_1", "encoder_2"):
        chex.assert_trees_all_equal(new_state.params[name], state.params[name])
    # The head's Adam update does not depend on the other leaves' gradients (no clipping).
    chex.assert_trees_all_close(new_state.params["head"], free_state.params["head"],
                                rtol=0, atol=4 * EPS)
    head_grads = jax.grad(lambda p: jnp.mean(problem.model.apply({"params": p}, batch["x"])
                                             ** 2))(state.params)["head"]
    np.testing.assert_allclose(float(metrics["grad_norm"]),
                               float(optax.tree.norm(head_grads)), rtol=8 * EPS)
    assert flops < 0.75 * free_flops, (flops, free_flops)
