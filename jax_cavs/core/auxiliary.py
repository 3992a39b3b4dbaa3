"""The strategies' auxiliary models (``Strategy.aux_models``, e.g. CMR's visual-only twin), as
the loop trains them: after the learner's training, on the same task stream, checkpointed
with the learner (phase "aux" of ``core.loop``), and logged to TensorBoard under their own
name on their own step axis.
"""

from __future__ import annotations

from typing import Any

from jax_cavs.core.state import ContinualState, copy_tree
from jax_cavs.core.strategy import AuxModel, TaskContext, TaskInfo


def train(experiment, state: ContinualState, ctx: TaskContext, meta: dict[str, Any],
          data: dict[str, Any], aux: dict[str, ContinualState]) -> dict[str, ContinualState]:
    """Trains the strategy's ``aux_models`` of this task, each on the task's stream like the
    learner and checkpointed with it, resuming a partly trained one; returns them by name.

    Their TensorBoard scalars are ``<name>/train/<term>`` at the model's own optimiser step
    counted over every task (``meta["aux_steps"]`` holds the earlier tasks' steps), so the
    curves stay in step order although each task's model starts afresh.
    """
    meta.setdefault("aux", [])
    meta.setdefault("aux_done", [])
    for spec in experiment.strategy.aux_models(ctx.task):
        if spec.name in meta["aux_done"]:
            continue
        resuming = meta["phase"] == "aux" and meta.get("aux_training") == spec.name
        if not resuming:
            aux[spec.name] = start(experiment, state, spec, ctx.task)
            meta.update(phase="aux", aux_training=spec.name, step=0, aux=sorted(aux))
            data = {"items": data["items"], "iterator": None}

        def checkpoint(trained, step, iterator_state, name=spec.name):
            meta["step"] = step
            experiment.save(state, meta, {"items": data["items"], "iterator": iterator_state},
                            {**aux, name: trained}, announce=True)

        offset = meta.get("aux_steps", {}).get(spec.name, 0)

        def scalars(trained, i, values, name=spec.name):
            experiment.scalars(offset + i + 1,
                               {f"{name}/train/{k}": v for k, v in values.items()})

        aux[spec.name] = experiment.fit(
            aux[spec.name], ctx.task.index, experiment.step_fn(spec.strategy, spec.drop),
            spec.name, first=meta["step"], iterator_state=data.get("iterator"),
            checkpoint=checkpoint, scalars=scalars)
        meta.update(step=0, aux_done=meta["aux_done"] + [spec.name])
        experiment.save(state, meta, {"items": data["items"]}, aux)
    return aux


def count_steps(experiment, meta: dict[str, Any], task: TaskInfo, steps: int) -> None:
    """Adds the ``steps`` each auxiliary model of ``task`` trained to ``meta["aux_steps"]``
    (their TensorBoard step axis, ``train``)."""
    counts = meta.setdefault("aux_steps", {})
    for spec in experiment.strategy.aux_models(task):
        counts[spec.name] = counts.get(spec.name, 0) + steps


def start(experiment, state: ContinualState, spec: AuxModel, task: TaskInfo
          ) -> ContinualState:
    """An auxiliary model's state before its training: the learner's state (a copy: the
    train step donates its input) with the ``spec.start`` weights, then its strategy's
    ``begin_task`` and a fresh optimiser at the task's rate, as the learner started."""
    if spec.start == "teacher":
        state = state.replace(params=state.old_params, batch_stats=state.old_batch_stats)
    state = spec.strategy.begin_task(copy_tree(state), task)
    return experiment.place(experiment.fresh_optimizer(state, task.index))
