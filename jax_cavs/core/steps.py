"""The shared train and evaluation steps, built once per experiment.

``make_train_step(model, strategy)`` returns a pure function ``(state, batch, rng) ->
(state, metrics)``: the student forward in train mode (BatchNorm statistics updated), the
frozen teacher forward in eval mode when the strategy uses one (skipped by ``lax.cond`` on the
first task, so the step compiles once for the whole experiment), the strategy's loss terms
plus its parameter penalty, gradients, the optimiser update and the strategy's after-step
transform (e.g. the SI path integral). It never syncs with the host; metrics stay on device.

``make_eval_step(model)`` returns ``(params, batch_stats, seen, batch) -> confusion`` where
predictions are the argmax over the seen classes only and padded clips / unannotated frames
are weighted out.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jax_cavs.problems.cavs import metrics as seg_metrics
from jax_cavs.core.state import ContinualState
from jax_cavs.core.strategy import Batch, Outputs, Strategy

NEG_INF = -1e9


def forward(model, params, batch_stats, batch: Batch, *, train: bool,
            zero_audio: bool = False):
    """Runs ``model``; returns (Outputs, new batch_stats or None)."""
    variables = {"params": params, "batch_stats": batch_stats}
    audio = jnp.zeros_like(batch["audio"]) if zero_audio else batch["audio"]
    args = (batch["frames"], audio, batch["frame_mask"])
    if train:
        (logits, features), updates = model.apply(variables, *args, train=True,
                                                  mutable=["batch_stats"])
        return Outputs(logits, _float32(features)), updates["batch_stats"]
    logits, features = model.apply(variables, *args, train=False)
    return Outputs(logits, _float32(features)), None


def _float32(features):
    """Feature-distillation losses run in float32 even when the model computes in bfloat16."""
    return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), features)


def mask_unseen(logits: jnp.ndarray, seen: jnp.ndarray) -> jnp.ndarray:
    """Logits of classes not yet seen pushed to -1e9 (static shapes: heads are unmasked)."""
    return jnp.where(seen, logits, NEG_INF)


def predict(model, params, batch_stats, seen, batch: Batch, *, zero_audio: bool = False):
    """Eval-mode prediction over the seen classes: labels int32 [N, T, H, W]."""
    outputs, _ = forward(model, params, batch_stats, batch, train=False, zero_audio=zero_audio)
    return jnp.argmax(mask_unseen(outputs.logits, seen), axis=-1)


def make_train_step(model, strategy: Strategy, *, zero_audio: bool = False
                    ) -> Callable[[ContinualState, Batch, jax.Array], tuple]:
    """Builds the pure train step for ``model`` and ``strategy`` (jit it with donation).

    ``zero_audio`` trains the visual-only twin (audio features replaced by zeros).
    """

    def teacher_outputs(state: ContinualState, batch: Batch) -> Outputs | None:
        if not strategy.uses_teacher:
            return None

        def run(_):
            outputs, _ = forward(model, state.old_params, state.old_batch_stats, batch,
                                 train=False, zero_audio=zero_audio)
            return jax.tree_util.tree_map(jax.lax.stop_gradient, outputs)

        shapes = jax.eval_shape(run, None)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return jax.lax.cond(state.has_teacher, run, lambda _: zeros, None)

    def train_step(state: ContinualState, batch: Batch, rng: jax.Array):
        teacher = teacher_outputs(state, batch)

        def loss_fn(params):
            student, batch_stats = forward(model, params, state.batch_stats, batch,
                                           train=True, zero_audio=zero_audio)
            loss, terms = strategy.loss(state, batch, student, teacher, rng)
            penalty = strategy.penalty(params, state)
            return loss + penalty, (terms, penalty, batch_stats)

        (loss, (terms, penalty, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  batch_stats=batch_stats)
        new_state = strategy.after_step(new_state, grads, state.params)
        metrics = {"loss": loss, "penalty": penalty, "grad_norm": optax.global_norm(grads),
                   **terms}
        return new_state, metrics

    return train_step


def make_eval_step(model, num_classes: int, *, zero_audio: bool = False):
    """``(params, batch_stats, seen, batch) -> confusion int32[K, K]`` for one batch."""

    def eval_step(params, batch_stats, seen, batch: Batch) -> jnp.ndarray:
        pred = predict(model, params, batch_stats, seen, batch, zero_audio=zero_audio)
        weights = jnp.broadcast_to(
            (batch["label_mask"] * batch["valid"][:, None])[..., None, None], pred.shape)
        return seg_metrics.confusion_matrix(pred, batch["labels"], num_classes,
                                            weights=weights)

    return eval_step
