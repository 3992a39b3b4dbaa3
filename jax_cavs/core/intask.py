"""Evaluation inside a task's training, as the loop runs it: validation with the best epoch
kept (rules in ``core.validation``) and the scenario's test-split eval points (task-free
protocols). Both histories ride in the checkpoint ``meta`` and end in ``metrics.json``.
"""

from __future__ import annotations

from typing import Any

from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import progress, validation
from jax_cavs.core.state import ContinualState


def during_training(experiment, t: int, meta: dict[str, Any]):
    """``during(state, step, steps per epoch, steps, guard)`` for task ``t``'s training
    (``Experiment.fit``), or None: validation at ``validation.due`` steps when
    ``config.train.validate_every`` (the best learner saved as ``models/best_<t>``), and a
    test-split evaluation at the scenario's ``eval_points`` of this task."""
    cfg, sc = experiment.config.train, experiment.scenario
    points = {step for task, step in sc.eval_points if task == t}
    if not cfg.get("validate_every", 0) and not points:
        return None

    def during(state: ContinualState, step: int, epoch_steps: int, steps: int, guard):
        epoch = cfg.get("validate_every", 0) and validation.due(
            step, epoch_steps, cfg.validate_every, steps)
        if epoch or step in points:
            guard.check()
        if epoch:
            # The model as it would end the task here (e.g. iCaRL's class means refreshed);
            # training goes on from ``state``.
            scored = experiment.place(experiment.strategy.before_validation(
                state, experiment.task_context(t)))
            scores = experiment.evaluate(scored, t, sc.val_split, sc.tasks[t].val_indices)
            value = validation.metric_value(scores["record"], cfg.select_metric)
            history = meta.setdefault("validation", {"metric": cfg.select_metric,
                                                     "scores": []})
            if validation.record(history, epoch, value):
                ckpt_lib.save_task_model(experiment.workdir, t, scored.params,
                                         scored.batch_stats, kind="best")
            experiment.scalars(int(state.step), {f"val/{cfg.select_metric}": value})
        if step in points:
            scores = experiment.evaluate(state, t)
            meta.setdefault("eval_points", []).append(
                {"step": step, "groups": scores["groups"], **scores["record"]})

    return during


def restore_best(experiment, state: ContinualState, t: int, history: dict[str, Any]
                 ) -> ContinualState:
    """The learner of the best validated epoch of task ``t`` (``models/best_<t>``)."""
    params, batch_stats = ckpt_lib.load_task_model(experiment.workdir, t, state.params,
                                                    state.batch_stats, kind="best")
    progress.log(f"{progress.task_label(t, experiment.scenario.num_tasks)}: epoch "
                 f"{history['best']['epoch']} selected ({history['metric']} = "
                 f"{history['best']['score']})")
    return state.replace(params=params, batch_stats=batch_stats)
