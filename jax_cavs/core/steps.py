"""The shared train and evaluation steps, built once per (problem, strategy).

``make_train_step(problem, strategy)`` returns a pure function ``(state, batch, rng) ->
(state, metrics)``: the student forward in train mode (BatchNorm statistics updated), the
frozen teacher forward in eval mode when the strategy uses one (skipped by ``lax.cond`` on the
first task, so the step compiles once for the whole experiment), the strategy's loss terms
plus its parameter penalty, gradients, the optimiser update and the strategy's after-step
transform (e.g. the SI path integral). Rows of the "classifier" role (``core.roles``; class
axis last) for classes not seen yet get no update: they do not exist yet (torch codes grow the
head per task, AV-CIL's ``incremental_classifier``), so weight decay must not move them from
their initialisation before their task starts. Leaves of the "frozen" role enter the loss as
constants (``stop_gradient``): the optimiser never moves them (``core.optim``), and without
their gradients XLA drops the backward pass through them (CAVS: the frozen VGGish, half the
paper-size model's parameters), so ``grads`` holds exact zeros there. It never syncs with
the host; metrics stay on device.
``drop`` trains a model that does without some modalities (CMR's visual-only twin drops the
audio, ``core.problem.MODALITIES``); its teacher is fed the same input. A problem with
``loss_terms`` (``core.problem.Problem``, optional) adds its own weighted terms to every
strategy's loss (CAVS: AVSBench's AVM term); they are logged beside the strategy's.

``make_eval_step(problem)`` returns ``(params, batch_stats, seen, batch, stats) -> stats``,
the problem's evaluator update over one batch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jax_cavs.core import roles
from jax_cavs.core.problem import Batch, Outputs, Problem
from jax_cavs.core.state import ContinualState
from jax_cavs.core.strategy import Strategy


def variables(params, batch_stats) -> dict:
    """The flax variables of a model from its two state fields."""
    return {"params": params, "batch_stats": batch_stats}


def make_train_step(problem: Problem, strategy: Strategy, *, drop: frozenset[str] = frozenset()
                    ) -> Callable[[ContinualState, Batch, jax.Array], tuple]:
    """Builds the pure train step for ``problem`` and ``strategy`` (jit it with donation)."""

    head = tuple(problem.param_roles().get("classifier", ()))
    problem_terms = getattr(problem, "loss_terms", None)  # optional in the protocol
    frozen = tuple(problem.param_roles().get("frozen", ()))

    def as_constants_where_frozen(params):
        if not frozen:
            return params
        return jax.tree_util.tree_map(lambda p, m: jax.lax.stop_gradient(p) if m else p,
                                      params, roles.leaf_mask(params, include=frozen))

    def unseen_rows_fixed(updates, seen):
        if not head:
            return updates
        in_head = roles.leaf_mask(updates, include=head)
        return jax.tree_util.tree_map(
            lambda u, m: jnp.where(seen, u, 0).astype(u.dtype)
            if m and u.shape[-1:] == seen.shape else u, updates, in_head)

    def teacher_outputs(state: ContinualState, batch: Batch) -> Outputs | None:
        if not strategy.uses_teacher:
            return None

        def run(_):
            outputs, _ = problem.apply(variables(state.old_params, state.old_batch_stats),
                                       batch, train=False, drop=drop)
            return jax.tree_util.tree_map(jax.lax.stop_gradient, outputs)

        shapes = jax.eval_shape(run, None)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return jax.lax.cond(state.has_teacher, run, lambda _: zeros, None)

    def train_step(state: ContinualState, batch: Batch, rng: jax.Array):
        teacher = teacher_outputs(state, batch)

        def loss_fn(params):
            params = as_constants_where_frozen(params)
            student, batch_stats = problem.apply(variables(params, state.batch_stats), batch,
                                                 train=True, drop=drop)
            loss, terms = strategy.loss(state, batch, student, teacher, rng)
            extra = problem_terms(student, batch, state.seen, drop=drop) if problem_terms else {}
            if extra:
                loss, terms = loss + sum(extra.values()), {**terms, **extra}
            penalty = strategy.penalty(params, state)
            return loss + penalty, (terms, penalty, batch_stats)

        (loss, (terms, penalty, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        updates = unseen_rows_fixed(updates, state.seen)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  batch_stats=batch_stats)
        new_state = strategy.after_step(new_state, grads, state.params)
        metrics = {"loss": loss, "penalty": penalty, "grad_norm": optax.tree.norm(grads),
                   **terms}
        return new_state, metrics

    return train_step


def make_eval_step(problem: Problem, *, drop: frozenset[str] = frozenset()):
    """``(params, batch_stats, seen, batch, stats) -> stats``: one evaluator update."""

    def eval_step(params, batch_stats, seen, batch: Batch, stats):
        outputs, _ = problem.apply(variables(params, batch_stats), batch, train=False,
                                   drop=drop)
        return problem.evaluator.update(stats, outputs, batch, seen)

    return eval_step
