"""The continual experiment: the same loop for every method.

For each task of the scenario: ``begin_task`` (masks, teacher snapshot, fresh optimiser at
the task's learning rate), ``prepare_task`` (strategy passes over the task data), a grain
stream of the task's videos mixed with the strategy's replay videos, jit'd train steps
(optionally validated every k epochs, the best epoch kept: ``core.validation``), the
strategy's auxiliary models (CMR's visual-only twin) trained on the same stream, ``end_task``
(importance, memory selection), the problem's evaluator on the common test set over every
class seen so far, one row of the accuracy matrix, ``metrics.json`` and an atomic orbax
checkpoint. Re-running on the same workdir resumes where it stopped, bitwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from jax_cavs.core import accuracy
from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import guards, jsonio, optim, parallel, report, validation
from jax_cavs.core import steps as steps_lib
from jax_cavs.core.problem import Problem
from jax_cavs.core import scenario as scenario_lib
from jax_cavs.core.scenario import Scenario
from jax_cavs.core.state import ContinualState, copy_tree, initial_state
from jax_cavs.core.strategy import Strategy, TaskContext, TaskInfo, get_strategy


@dataclasses.dataclass
class Experiment:
    """Everything built once per run; ``run()`` executes (or resumes) the task loop."""

    config: ml_collections.ConfigDict
    workdir: str
    problem: Problem
    scenario: Scenario
    strategy: Strategy
    state: ContinualState
    checkpointer: ckpt_lib.Checkpointer

    @classmethod
    def create(cls, config: ml_collections.ConfigDict, workdir: str, problem: Problem,
               allow_config_change: bool = False) -> "Experiment":
        guards.check_workdir_config(workdir, config, allow_config_change)
        hparams = {k: v for k, v in config.strategy.items() if k != "name"}
        strategy = get_strategy(config.strategy.name, hparams, problem)
        if config.first_task_from:
            guards.check_first_task_source(os.path.expanduser(config.first_task_from),
                                           config, strategy)
        scenario = problem.scenario(joint=strategy.single_task)
        state = initial_state(config, problem, strategy)
        if jax.process_index() == 0:
            jsonio.write_json_atomic(os.path.join(workdir, "config.json"),
                                     json.loads(config.to_json()))
        if config.train.get("batch_to_devices", False):
            config = parallel.batches_to_devices(config,
                                                 parallel.make_mesh(config.parallel).devices.size)
        validation.check_scenario(config, scenario)
        return cls(config, workdir, problem, scenario, strategy, state,
                   ckpt_lib.Checkpointer(workdir))

    # -- jit'd functions, built once ------------------------------------------------------
    def __post_init__(self):
        self.mesh = parallel.make_mesh(self.config.parallel)
        self.state = self.place(self.state)
        self._steps: dict[tuple, Any] = {}
        self._task_items: dict[int, list] = {}
        self.writer = report.ScalarWriter(self.workdir) if jax.process_index() == 0 else None
        self._eval_step = parallel.jit_eval_step(steps_lib.make_eval_step(self.problem),
                                                 self.mesh, self.state)
        problem = self.problem
        forward = parallel.jit_forward(lambda p, bs, batch: problem.apply(
            steps_lib.variables(p, bs), batch, train=False)[0], self.mesh, self.state)
        self.forward = lambda p, bs, batch: forward(p, bs, self.device_batch(batch, whole=True))

    def place(self, state: ContinualState) -> ContinualState:
        """Lays the state out on the mesh (a no-op for leaves already placed)."""
        return parallel.shard_state(state, self.mesh)

    def device_batch(self, batch: dict[str, np.ndarray], whole: bool = False
                     ) -> dict[str, jax.Array]:
        """This process's slice of a global batch (or, ``whole``, all of it) on the mesh."""
        return parallel.shard_batch(batch, self.mesh, whole=whole)

    # -- data ---------------------------------------------------------------------------
    def task_info(self, t: int) -> TaskInfo:
        sc = self.scenario
        return TaskInfo(index=t, num_tasks=sc.num_tasks, classes=sc.tasks[t].classes,
                        current=sc.current_mask(t), old=sc.old_mask(t), seen=sc.seen_mask(t),
                        label_policy=sc.tasks[t].label_policy)

    def batches(self, indices, mask: np.ndarray, split: str = "train", whole: bool = False):
        """Eval-mode batches over ``indices`` of ``split``, labels restricted to ``mask``:
        this process's slice of every batch, or with ``whole`` every batch on every process
        (host passes whose results every process needs, ``parallel`` module doc)."""
        shard_index, shard_count = (0, 1) if whole else (jax.process_index(),
                                                         jax.process_count())
        return self.problem.eval_batches(
            split, indices, mask, batch_size=self.config.train.eval_batch_size,
            worker_count=self.config.train.worker_count, shard_index=shard_index,
            shard_count=shard_count)

    def task_context(self, t: int) -> TaskContext:
        info = self.task_info(t)
        masks = {"current": info.current, "seen": info.seen}
        return TaskContext(
            task=info, train_indices=self.scenario.tasks[t].train_indices,
            batches=lambda indices, labels="current": self.batches(indices, masks[labels],
                                                                   whole=True),
            device_batch=lambda batch: self.device_batch(batch, whole=True),
            forward=self.forward, problem=self.problem, workdir=self.workdir,
            rng=np.random.default_rng([self.config.seed, t]))

    def fresh_optimizer(self, state: ContinualState, t: int) -> ContinualState:
        """A new optimiser state (each task starts fresh, as in PLOP/MiB) at task ``t``'s
        learning rate."""
        cfg = self.config.optimizer
        rate = cfg.lr if t == 0 else cfg.lr_incremental
        return state.replace(opt_state=optim.fresh_state(state.tx, state.params, rate))

    def step_fn(self, strategy: Strategy, drop: frozenset[str] = frozenset()):
        """The jit'd train step of ``strategy`` (built once per strategy and dropped inputs)."""
        key = (strategy, drop)
        if key not in self._steps:
            self._steps[key] = parallel.jit_train_step(
                steps_lib.make_train_step(self.problem, strategy, drop=drop),
                self.mesh, self.state)
        return self._steps[key]

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self, state: ContinualState, t: int, split: str = "test",
                 indices: np.ndarray | None = None) -> dict[str, Any]:
        """The problem's evaluator over ``indices`` of ``split`` (default: the test records),
        every class seen so far live."""
        seen = self.scenario.seen_mask(t)
        indices = self.scenario.test_indices if indices is None else indices
        num = -(-len(indices) // self.config.train.eval_batch_size)
        stats = jax.device_put(self.problem.evaluator.init(), parallel.replicated(self.mesh))
        for batch in tqdm(self.batches(indices, seen, split=split), total=num,
                          desc=f"task {t} {'eval' if split == 'test' else split}", leave=False):
            stats = self._eval_step(state.params, state.batch_stats, jnp.asarray(seen),
                                    self.device_batch(batch), stats)
        return self.problem.evaluator.finalize(jax.device_get(stats), self.scenario, seen)

    # -- the loop -----------------------------------------------------------------------
    # A task runs in phases, each ending in an atomic checkpoint, so a killed run resumes
    # exactly: "start" (nothing done yet) -> begin/prepare, then "train" (``step`` optimiser
    # steps done, grain iterator state saved) -> "trained" (training finished) -> "aux" (the
    # strategy's auxiliary models, ``meta["aux_done"]`` finished, ``meta["aux_training"]`` at
    # ``step``) -> end_task and evaluation -> the next task's "start".
    def run(self) -> dict[str, Any]:
        state, meta, data, aux = self.state, {"task": 0, "phase": "start", "step": 0,
                                              "save": 0, "tasks": [], "accuracy_matrix": []
                                              }, {}, {}
        if self.checkpointer.latest_step() is not None:
            state, meta, data, aux = self.checkpointer.restore(state)
            aux = {name: self.place(a) for name, a in aux.items()}
            state = self.place(state)
            print(f"[jax_cavs] Resuming from {self.checkpointer.directory}: task {meta['task']}, "
                  f"phase {meta['phase']}, step {meta['step']}.", file=sys.stderr, flush=True)
        while meta["task"] < self.scenario.num_tasks:
            t = meta["task"]
            ctx = self.task_context(t)
            if meta["phase"] == "start":
                state = self.begin_task(state, ctx)
                meta.update(phase="train", step=0)
                meta.pop("validation", None), meta.pop("eval_points", None)
                data = {"items": self._task_items[t], "iterator": None}
            self._task_items[t] = [tuple(item) for item in data["items"]]
            if meta["phase"] == "train":
                if t == 0 and self.config.first_task_from:
                    state = self.reuse_first_task(state)
                else:
                    def checkpoint(trained, step, iterator_state):
                        meta["step"] = step
                        self.save(trained, meta, {"items": data["items"],
                                                  "iterator": iterator_state})

                    state = self.fit(state, t, self.step_fn(self.strategy), "train",
                                     first=meta["step"], iterator_state=data.get("iterator"),
                                     checkpoint=checkpoint, log=True,
                                     during=self.in_task_evaluation(t, meta))
                    if meta.get("validation"):
                        state = self.restore_best(state, t, meta["validation"])
                ckpt_lib.save_task_model(self.workdir, t, state.params, state.batch_stats)
                meta.update(phase="trained", step=0, aux=[], aux_done=[])
                self.save(state, meta, {"items": data["items"]})
            ctx.aux = self.train_aux_models(state, ctx, meta, data, aux)
            start = time.time()
            state = self.place(self.strategy.end_task(state, ctx))
            scores = self.evaluate(state, t)
            meta["tasks"].append(self.task_record(t, scores, meta))
            meta["accuracy_matrix"].append(scores["groups"])
            meta.update(task=t + 1, phase="start", step=0, aux=[], aux_done=[])
            meta.pop("validation", None), meta.pop("eval_points", None)
            aux = {}
            self.save(state, meta, {})
            self.write_outputs(state, meta, t, time.time() - start)
        self.state = state
        metrics = self.write_metrics(meta)
        report.print_summary(metrics, self.problem.evaluator.headline)
        return metrics

    def begin_task(self, state: ContinualState, ctx: TaskContext) -> ContinualState:
        """begin_task, a fresh optimiser at the task's rate, prepare_task, the replay items."""
        state = self.strategy.begin_task(state, ctx.task)
        state = self.fresh_optimizer(state, ctx.task.index)
        state = self.place(self.strategy.prepare_task(state, ctx))
        self._task_items[ctx.task.index] = scenario_lib.training_items(
            ctx.train_indices, self.strategy.replay_ids(state, ctx))
        return state

    def reuse_first_task(self, state: ContinualState) -> ContinualState:
        """The learner after the first task's training, taken from the run in
        ``config.first_task_from`` (MiB/PLOP's ``--step_ckpt``; both runs must train it alike:
        ``guards.check_first_task_source``); this strategy's ``end_task`` then runs as usual."""
        source = os.path.expanduser(self.config.first_task_from)
        params, batch_stats = ckpt_lib.load_task_model(source, 0, state.params,
                                                        state.batch_stats)
        print(f"[jax_cavs] task 1 reused from {ckpt_lib.task_model_path(source, 0)}",
              file=sys.stderr, flush=True)
        return state.replace(params=params, batch_stats=batch_stats)

    def train_aux_models(self, state: ContinualState, ctx: TaskContext, meta: dict[str, Any],
                         data: dict[str, Any], aux: dict[str, ContinualState]
                         ) -> dict[str, ContinualState]:
        """Trains the strategy's ``aux_models`` of this task (phase "aux"), each on the task's
        stream like the learner and checkpointed with it, resuming a partly trained one."""
        meta.setdefault("aux", [])
        meta.setdefault("aux_done", [])
        for spec in self.strategy.aux_models(ctx.task):
            if spec.name in meta["aux_done"]:
                continue
            resuming = meta["phase"] == "aux" and meta.get("aux_training") == spec.name
            if not resuming:
                aux[spec.name] = self.aux_start(state, spec, ctx.task)
                meta.update(phase="aux", aux_training=spec.name, step=0, aux=sorted(aux))
                data = {"items": data["items"], "iterator": None}

            def checkpoint(trained, step, iterator_state, name=spec.name):
                meta["step"] = step
                self.save(state, meta, {"items": data["items"], "iterator": iterator_state},
                          {**aux, name: trained})

            aux[spec.name] = self.fit(
                aux[spec.name], ctx.task.index, self.step_fn(spec.strategy, spec.drop),
                spec.name, first=meta["step"], iterator_state=data.get("iterator"),
                checkpoint=checkpoint)
            meta.update(step=0, aux_done=meta["aux_done"] + [spec.name])
            self.save(state, meta, {"items": data["items"]}, aux)
        return aux

    def aux_start(self, state: ContinualState, spec, task: TaskInfo) -> ContinualState:
        """An auxiliary model's state before its training: the learner's state (a copy: the
        train step donates its input) with the ``spec.start`` weights, then its strategy's
        ``begin_task`` and a fresh optimiser at the task's rate, as the learner started."""
        if spec.start == "teacher":
            state = state.replace(params=state.old_params, batch_stats=state.old_batch_stats)
        state = spec.strategy.begin_task(copy_tree(state), task)
        return self.place(self.fresh_optimizer(state, task.index))

    def save(self, state: ContinualState, meta: dict[str, Any], data: dict[str, Any],
             aux: dict[str, ContinualState] | None = None) -> None:
        meta["save"] += 1
        self.checkpointer.save(meta["save"], state, meta, data, aux)

    def fit(self, state: ContinualState, t: int, step_fn, desc: str, first: int = 0,
            iterator_state: dict | None = None, checkpoint=None, log: bool = False,
            during=None) -> ContinualState:
        """Runs ``step_fn`` over ``config.train.epochs`` shuffled epochs of task ``t``'s items.

        Starts at step ``first`` from ``iterator_state``; calls ``checkpoint(state, step,
        iterator state)`` every ``config.train.checkpoint_every`` steps and ``during(state,
        step, steps per epoch, steps)`` after every step (``in_task_evaluation``); ``log``
        writes the losses to TensorBoard. A non-finite loss term stops the run before
        anything is saved
        (``NonFiniteLoss``).
        """
        cfg = self.config.train
        items = self._task_items[t]
        epoch_steps = self.problem.steps_per_epoch(items, cfg.batch_size)
        steps = cfg.epochs * epoch_steps
        iterator = self.problem.train_stream(
            items, self.task_info(t), batch_size=cfg.batch_size, num_epochs=cfg.epochs,
            seed=self.config.seed * 1000 + t, worker_count=cfg.worker_count,
            shard_index=jax.process_index(), shard_count=jax.process_count())
        if iterator_state:
            iterator.set_state(iterator_state)
        rng = jax.random.fold_in(jax.random.key(self.config.seed), t)
        guard = guards.NonFiniteGuard(t, desc)
        bar = tqdm(range(first, steps), initial=first, total=steps,
                   desc=f"task {t + 1}/{self.scenario.num_tasks} {desc}")
        for i in bar:
            batch = self.device_batch(next(iterator))
            state, metrics = step_fn(state, batch, jax.random.fold_in(rng, i))
            guard.update(i, metrics)
            last = i + 1 == steps
            if (i + 1) % cfg.log_every == 0 or last:
                guard.check()
                values = {k: float(v) for k, v in metrics.items()}
                bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
                if log and self.writer:
                    self.writer.scalars(int(state.step), {
                        **{f"train/{k}": v for k, v in values.items()},
                        "train/learning_rate": float(optim.learning_rate(state.opt_state))})
            if during:
                during(state, i + 1, epoch_steps, steps, guard)
            if checkpoint and cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 \
                    and not last:
                guard.check()
                checkpoint(state, i + 1, iterator.get_state())
        guard.check()
        return state

    def in_task_evaluation(self, t: int, meta: dict[str, Any]):
        """``during(state, step, steps per epoch, steps, guard)`` for task ``t``'s training, or
        None: validation at ``validation.due`` steps when ``config.train.validate_every``
        (best epoch kept, ``core.validation``), and a test-split evaluation at the scenario's
        ``eval_points`` of this task (task-free protocols). Both histories ride in ``meta``."""
        cfg, sc = self.config.train, self.scenario
        points = {step for task, step in sc.eval_points if task == t}
        if not cfg.get("validate_every", 0) and not points:
            return None

        def during(state: ContinualState, step: int, epoch_steps: int, steps: int, guard):
            epoch = cfg.get("validate_every", 0) and validation.due(
                step, epoch_steps, cfg.validate_every, steps)
            if epoch or step in points:
                guard.check()
            if epoch:
                scores = self.evaluate(state, t, sc.val_split, sc.tasks[t].val_indices)
                value = validation.metric_value(scores["record"], cfg.select_metric)
                history = meta.setdefault("validation", {"metric": cfg.select_metric,
                                                         "scores": []})
                if validation.record(history, epoch, value):
                    ckpt_lib.save_task_model(self.workdir, t, state.params, state.batch_stats,
                                             kind="best")
                if self.writer:
                    self.writer.scalars(int(state.step), {f"val/{cfg.select_metric}": value})
            if step in points:
                scores = self.evaluate(state, t)
                meta.setdefault("eval_points", []).append(
                    {"step": step, "groups": scores["groups"], **scores["record"]})

        return during

    def restore_best(self, state: ContinualState, t: int, history: dict[str, Any]
                     ) -> ContinualState:
        """The learner of the best validated epoch (``models/best_<t>``)."""
        params, batch_stats = ckpt_lib.load_task_model(self.workdir, t, state.params,
                                                        state.batch_stats, kind="best")
        print(f"[jax_cavs] task {t + 1}: epoch {history['best']['epoch']} selected "
              f"({history['metric']} = {history['best']['score']})", file=sys.stderr,
              flush=True)
        return state.replace(params=params, batch_stats=batch_stats)

    def task_record(self, t: int, scores: dict[str, Any], meta: dict[str, Any]
                    ) -> dict[str, Any]:
        extra = {k: meta[k] for k in ("validation", "eval_points") if meta.get(k)}
        return {"task": t, "classes": list(self.scenario.tasks[t].classes), **scores["record"],
                **extra}

    def metrics(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The ``metrics.json`` content for the tasks finished so far."""
        return accuracy.metrics_document(
            self.strategy.name, self.problem.name, self.problem.evaluator.headline,
            self.scenario.describe(), meta["tasks"], meta["accuracy_matrix"],
            self.problem.evaluator.summary(meta["tasks"]) if meta["tasks"] else {})

    def write_metrics(self, meta: dict[str, Any]) -> dict[str, Any]:
        metrics = self.metrics(meta)
        if jax.process_index() == 0:
            jsonio.write_json_atomic(os.path.join(self.workdir, "metrics.json"), metrics)
        return metrics

    def write_outputs(self, state: ContinualState, meta: dict[str, Any], t: int,
                      seconds: float) -> None:
        """After task ``t``: metrics.json, TensorBoard scores, timings and the report."""
        self.write_metrics(meta)
        # Runs the model: every process takes part.
        panels = self.problem.report_inputs(self.forward, state, self.scenario, t,
                                            lambda i, m: self.batches(i, m, "test", whole=True))
        if jax.process_index() != 0:
            return
        headline = self.problem.evaluator.headline
        self.writer.scalars(t, {f"{headline}/{k}": v
                                for k, v in meta["tasks"][-1][headline].items()})
        jsonio.update_json_atomic(os.path.join(self.workdir, "timings.json"), str(t),
                                  round(seconds, 1))
        report.write_report(self.workdir, self.problem.report_panels(self.workdir, **panels))
