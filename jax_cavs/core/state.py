"""The continual train state: one pytree that is the whole truth of a run.

Everything a continual method needs lives here with static shapes for the whole experiment
(ARCHITECTURE.md): the learner (params, BatchNorm statistics, optimiser state), the frozen
teacher (the learner at the end of the previous task), the regularisation anchor, the
per-parameter importance and the running path integral (allocated only for methods that use
them, with the params' structure), the class masks, the replay memory of sample indices and a
dict of method-specific arrays (e.g. PLOP's entropy thresholds).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from jax_cavs.core import optim
from jax_cavs.core.memory import ReplayMemory

PyTree = Any


@flax.struct.dataclass
class ContinualState:
    """Continual train state; ``jax.tree_util`` sees every field except ``tx``."""

    step: jnp.ndarray            # int32 scalar, optimiser steps in the whole run
    task: jnp.ndarray            # int32 scalar, index of the current task
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    old_params: PyTree           # teacher = learner at the end of the previous task
    old_batch_stats: PyTree
    anchor: PyTree | None        # regularisers pull towards it (EWC/SI/MAS); None if unused
    importance: PyTree | None    # per-parameter importance, params' structure
    path_integral: PyTree | None  # running SI accumulator  sum_k -g_k * delta_k
    seen: jnp.ndarray            # bool[K] classes learned so far, incl. bg and current
    old: jnp.ndarray             # bool[K] classes learned before the current task, incl. bg
    current: jnp.ndarray         # bool[K] classes of the current task
    memory: ReplayMemory
    extras: dict[str, jnp.ndarray]
    tx: Any = flax.struct.field(pytree_node=False, default=None)

    @property
    def has_teacher(self) -> jnp.ndarray:
        return self.task > 0


def zeros_like_tree(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def copy_tree(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.copy, tree)


def create_state(variables: dict, tx, num_classes: int, memory_capacity: int,
                 use_importance: bool, extras: dict[str, jnp.ndarray],
                 has_background: bool = True) -> ContinualState:
    """Fresh state for task 0 from the model's initial ``variables``; with
    ``has_background`` class 0 is seen (and old) from the start."""
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    opt_state = tx.init(params)
    # Distinct buffers for every copy: the train step donates the whole state.
    return ContinualState(
        step=jnp.zeros((), jnp.int32), task=jnp.zeros((), jnp.int32),
        params=params, batch_stats=batch_stats, opt_state=opt_state,
        old_params=copy_tree(params), old_batch_stats=copy_tree(batch_stats),
        anchor=copy_tree(params) if use_importance else None,
        importance=zeros_like_tree(params) if use_importance else None,
        path_integral=zeros_like_tree(params) if use_importance else None,
        seen=jnp.zeros((num_classes,), bool).at[0].set(has_background),
        old=jnp.zeros((num_classes,), bool).at[0].set(has_background),
        current=jnp.zeros((num_classes,), bool),
        # At least one slot: orbax cannot store zero-size arrays.
        memory=ReplayMemory.empty(max(memory_capacity, 1), num_classes),
        extras=extras, tx=tx)


def initial_state(config, problem, strategy, seed: int | None = None) -> ContinualState:
    """The ``core.problem.Problem``'s initial variables in a fresh ``ContinualState`` for
    ``strategy`` (its memory, importance and extras), the optimiser of ``core.optim``."""
    variables = problem.init(jax.random.key(config.seed if seed is None else seed))
    k = problem.num_classes
    tx = optim.build_optimizer(config.optimizer, problem.param_roles().get("frozen", ()))
    return create_state(variables, tx, k, strategy.memory_capacity(k),
                        strategy.uses_importance, strategy.init_extras(k),
                        has_background=problem.has_background)
