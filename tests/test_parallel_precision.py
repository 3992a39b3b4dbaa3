"""The model's accelerator options (the model config's ``remat_backbone`` and ``dtype``):
rematerialisation of the backbone keeps the gradients, and bfloat16 compute keeps float32
parameters, logits and loss (tolerances in each test's doc). Helpers come from
test_parallel.py."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.problems.cavs import strategies
from jax_cavs.core import steps as train_lib
from jax_cavs.models.backbones.resnet import ResNet
from test_parallel import SIZE, initial_state, random_batch, random_like


# -- mixed precision and rematerialisation -------------------------------------------------------

def test_remat_backbone_gives_the_same_gradients():
    """nn.remat recomputes the blocks' activations in the backward pass with the same
    operations, so gradients agree to float32 rounding (rtol 1e-5 over the ~1e4-term sums of
    a 32x32 feature map, sqrt(n)·eps ≈ 1.2e-5 relative)."""
    frames = jnp.asarray(np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)), jnp.float32)

    def gradients(remat: bool):
        net = ResNet(18, 0.25, jnp.float32, remat)
        variables = random_like(jax.eval_shape(
            lambda: net.init(jax.random.key(0), frames, train=False)))

        def loss(params):
            stages, _ = net.apply({**variables, "params": params}, frames, train=True,
                                  mutable=["batch_stats"])
            return sum(jnp.mean(s ** 2) for s in stages)

        return jax.jit(jax.grad(loss))(variables["params"])

    chex.assert_trees_all_close(gradients(True), gradients(False), rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_keeps_float32_params_logits_and_loss():
    """dtype=bfloat16: the train step's loss, updated params, BatchNorm statistics and optimiser
    state are float32 (read from the traced step, ``jax.eval_shape``); the loss is finite and
    the logits are float32 and equal the float32 model's within bfloat16 accuracy: relative
    error (Frobenius) below 5e-2, an order of magnitude above bfloat16's unit roundoff
    2^-8 ≈ 3.9e-3, and above 1e-4, far above float32 rounding, so the compute really is
    bfloat16."""
    problem16, state = initial_state(dtype="bfloat16")
    problem32, _ = initial_state()
    strategy16 = strategies.get_strategy("finetune", problem=problem16)
    batch = {k: jnp.asarray(v[:2]) for k, v in random_batch().items()}
    new_state, metrics = jax.eval_shape(train_lib.make_train_step(problem16, strategy16),
                                        state, batch, jax.random.key(0))
    floats = [x.dtype for x in jax.tree_util.tree_leaves(
        (new_state.params, new_state.batch_stats, new_state.opt_state, metrics))
        if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(dtype == jnp.float32 for dtype in floats)

    def loss_and_logits(problem):
        strategy = strategies.get_strategy("finetune", problem=problem)

        def run(s, b):
            outputs = problem.apply(train_lib.variables(s.params, s.batch_stats), b,
                                    train=True)[0]
            return strategy.loss(s, b, outputs, None, None)[0], outputs.logits
        return jax.jit(run)(state, batch)

    loss16, logits16 = loss_and_logits(problem16)
    _, logits32 = loss_and_logits(problem32)
    assert loss16.dtype == logits16.dtype == jnp.float32 and np.isfinite(float(loss16))
    error = float(jnp.linalg.norm(logits16 - logits32) / jnp.linalg.norm(logits32))
    assert 1e-4 < error < 5e-2

