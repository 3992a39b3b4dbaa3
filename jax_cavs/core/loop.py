"""The continual experiment: the same loop for every method.

For each task of the scenario: ``begin_task`` (masks, teacher snapshot, fresh optimiser at
the task's learning rate), ``prepare_task`` (strategy passes over the task data), a grain
stream of the task's videos mixed with the strategy's replay videos, jit'd train steps
(optionally validated every k epochs, the best epoch kept: ``core.validation``), the
strategy's auxiliary models (CMR's visual-only twin) trained on the same stream, ``end_task``
(importance, memory selection), the problem's evaluator on the common test set over every
class seen so far, one row of the accuracy matrix, ``metrics.json``, the report and an atomic
orbax checkpoint. Checkpoints are also written inside the training phases (every few minutes
by default, ``core.interrupts``), and a SIGINT/SIGTERM stops the run at its next checkpoint.
Re-running on the same workdir resumes where it stopped, bitwise; re-running a finished one
only says so (``Experiment.complete``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from jax_cavs.core import accuracy
from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import (auxiliary, guards, interrupts, intask, jsonio, optim, outputs,
                           parallel, progress, report, validation)
from jax_cavs.core import steps as steps_lib
from jax_cavs.core.problem import Problem
from jax_cavs.core import scenario as scenario_lib
from jax_cavs.core.scenario import Scenario
from jax_cavs.core.state import ContinualState, initial_state
from jax_cavs.core.strategy import Strategy, TaskContext, TaskInfo, get_strategy


def owned(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies of a stream batch's arrays: on CPU the device arrays would alias the grain
    workers' shared memory, which would then outlive a stopped stream (leaked blocks)."""
    return {k: np.array(v) for k, v in batch.items()}


@dataclasses.dataclass
class Experiment:
    """Everything built once per run; ``run()`` executes (or resumes) the task loop.

    ``complete``: the workdir holds a finished run; ``run()`` then only reports it. ``close()``
    (or a ``with`` block) releases the checkpointer and the TensorBoard writer.
    """

    config: ml_collections.ConfigDict
    workdir: str
    problem: Problem
    scenario: Scenario
    strategy: Strategy
    state: ContinualState
    checkpointer: ckpt_lib.Checkpointer
    complete: bool = False

    @classmethod
    def create(cls, config: ml_collections.ConfigDict, workdir: str, problem: Problem,
               allow_config_change: bool = False) -> "Experiment":
        """Checks the config against the workdir (``core.guards``) before writing anything;
        a finished run is opened as ``complete`` and left untouched."""
        hparams = {k: v for k, v in config.strategy.items() if k != "name"}
        strategy = get_strategy(config.strategy.name, hparams, problem)
        scenario = problem.scenario(joint=strategy.single_task)
        validation.check_scenario(config, scenario)
        position = ckpt_lib.read_position(workdir)
        complete = position is not None and position["task"] >= scenario.num_tasks
        changes = guards.check_workdir_config(workdir, config, allow_config_change, complete)
        if config.first_task_from and not complete:
            guards.check_first_task_source(os.path.expanduser(config.first_task_from),
                                           config, strategy)
        state = initial_state(config, problem, strategy)
        if jax.process_index() == 0 and not complete:
            guards.write_config(workdir, config, changes, position)
        if config.train.get("batch_to_devices", False):
            config = parallel.batches_to_devices(config,
                                                 parallel.make_mesh(config.parallel).devices.size)
        return cls(config, workdir, problem, scenario, strategy, state,
                   ckpt_lib.Checkpointer(workdir, reading=complete), complete)

    def __enter__(self) -> "Experiment":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.checkpointer.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- jit'd functions, built once ------------------------------------------------------
    def __post_init__(self):
        self.mesh = parallel.make_mesh(self.config.parallel)
        self.state = self.place(self.state)
        self._steps: dict[tuple, Any] = {}
        self._task_items: dict[int, list] = {}
        self._writer: report.ScalarWriter | None = None
        self.saves = interrupts.SaveSchedule(self.config.train)
        self.timings = progress.Timings({})
        self._eval_step = parallel.jit_eval_step(steps_lib.make_eval_step(self.problem),
                                                 self.mesh, self.state)
        problem = self.problem
        forward = parallel.jit_forward(lambda p, bs, batch: problem.apply(
            steps_lib.variables(p, bs), batch, train=False)[0], self.mesh, self.state)
        self.forward = lambda p, bs, batch: forward(p, bs, self.device_batch(batch, whole=True))

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """TensorBoard scalars at ``step`` (process 0; the writer is opened on first use, so
        a run that trains nothing adds no event file)."""
        if jax.process_index() != 0:
            return
        if self._writer is None:
            self._writer = report.ScalarWriter(self.workdir)
        self._writer.scalars(step, values)

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

    def batches(self, indices, mask: np.ndarray, split: str = "train", whole: bool = False,
                **options):
        """Eval-mode batches over ``indices`` of ``split``, labels restricted to ``mask``:
        this process's slice of every batch, or with ``whole`` every batch on every process
        (host passes whose results every process needs, ``parallel`` module doc); ``options``
        go to ``Problem.eval_batches``."""
        shard_index, shard_count = (0, 1) if whole else (jax.process_index(),
                                                         jax.process_count())
        return self.problem.eval_batches(
            split, indices, mask, batch_size=self.config.train.eval_batch_size,
            worker_count=self.config.train.worker_count, shard_index=shard_index,
            shard_count=shard_count, **options)

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
                 indices: np.ndarray | None = None, **options) -> dict[str, Any]:
        """The problem's evaluator over ``indices`` of ``split`` (default: the test records),
        every class seen so far live, on batches built with ``options`` (``batches``)."""
        seen = self.scenario.seen_mask(t)
        indices = self.scenario.test_indices if indices is None else indices
        num = -(-len(indices) // self.config.train.eval_batch_size)
        stats = jax.device_put(self.problem.evaluator.init(), parallel.replicated(self.mesh))
        label = progress.task_label(t, self.scenario.num_tasks)
        for batch in tqdm(self.batches(indices, seen, split=split, **options), total=num,
                          desc=f"{label} {'eval' if split == 'test' else split}", leave=False):
            stats = self._eval_step(state.params, state.batch_stats, jnp.asarray(seen),
                                    self.device_batch(batch), stats)
        return self.problem.evaluator.finalize(jax.device_get(stats), self.scenario, seen)

    # -- the loop -----------------------------------------------------------------------
    # A task runs in phases, each ending in an atomic checkpoint, so a killed run resumes
    # exactly: "start" (nothing done yet) -> begin/prepare, then "train" (``step`` optimiser
    # steps done, grain iterator state saved) -> "trained" (training finished) -> "aux" (the
    # strategy's auxiliary models, ``meta["aux_done"]`` finished, ``meta["aux_training"]`` at
    # ``step``) -> end_task, evaluation and outputs -> the next task's "start". A stop signal
    # ends the run at the next checkpoint (``save``).
    def run(self) -> dict[str, Any]:
        if self.complete:
            return outputs.report_complete(self)
        state, meta, data, aux = self.state, {"task": 0, "phase": "start", "step": 0,
                                              "save": 0, "tasks": [], "accuracy_matrix": []
                                              }, {}, {}
        if self.checkpointer.latest_step() is not None:
            state, meta, data, aux = self.checkpointer.restore(state)
            aux = {name: self.place(a) for name, a in aux.items()}
            state = self.place(state)
            progress.log(f"Resuming {self.workdir} at {self.where(meta, data)}.")
        self.timings = progress.Timings(meta)
        with interrupts.StopSignals() as signals:
            self.saves = interrupts.SaveSchedule(self.config.train, signals)
            while meta["task"] < self.scenario.num_tasks:
                state = self.run_task(state, meta, data, aux)
                data, aux = {}, {}
        self.state = state
        metrics = self.write_metrics(meta)
        report.print_summary(metrics, self.problem.evaluator.headline)
        return metrics

    def run_task(self, state: ContinualState, meta: dict[str, Any], data: dict[str, Any],
                 aux: dict[str, ContinualState]) -> ContinualState:
        """Task ``meta["task"]`` from the phase ``meta`` is at to the next task's start."""
        t = meta["task"]
        ctx = self.task_context(t)
        self.timings.enter("train")
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
                                              "iterator": iterator_state}, announce=True)

                scalars = (lambda trained, i, values: self.scalars(int(trained.step), {
                    **{f"train/{k}": v for k, v in values.items()},
                    "train/learning_rate": float(optim.learning_rate(trained.opt_state))}))
                state = self.fit(state, t, self.step_fn(self.strategy), "train",
                                 first=meta["step"], iterator_state=data.get("iterator"),
                                 checkpoint=checkpoint, scalars=scalars,
                                 during=intask.during_training(self, t, meta))
                if meta.get("validation"):
                    state = intask.restore_best(self, state, t, meta["validation"])
            ckpt_lib.save_task_model(self.workdir, t, state.params, state.batch_stats)
            meta.update(phase="trained", step=0, aux=[], aux_done=[])
            self.save(state, meta, {"items": data["items"]})
        self.timings.enter("end_task")
        ctx.aux = auxiliary.train(self, state, ctx, meta, data, aux)
        state = self.place(self.strategy.end_task(state, ctx))
        self.timings.enter("eval")
        scores = self.evaluate(state, t)
        meta["probes"] = outputs.probe_scores(self, state, t, scores)
        meta["tasks"].append({**self.task_record(t, scores, meta), **meta["probes"]})
        meta["accuracy_matrix"].append(scores["groups"])
        meta.update(task=t + 1, phase="start", step=0, aux=[], aux_done=[])
        meta.pop("validation", None), meta.pop("eval_points", None)
        auxiliary.count_steps(self, meta, ctx.task, self.total_steps(self._task_items[t]))
        panels = outputs.report_inputs(self, state, t)
        seconds = self.timings.finish()
        outputs.write(self, state, meta, t, seconds, panels)
        progress.log(progress.task_summary(t, self.scenario.num_tasks,
                                           self.problem.evaluator.headline,
                                           scores["record"][self.problem.evaluator.headline],
                                           seconds))
        self.save(state, meta, {})
        return state

    def total_steps(self, items) -> int:
        """Optimiser steps of one training run over a task's ``items``."""
        return self.config.train.epochs * self.problem.steps_per_epoch(
            [tuple(item) for item in items], self.config.train.batch_size)

    def where(self, meta: dict[str, Any], data: dict[str, Any]) -> str:
        """``progress.position`` of a checkpoint's ``meta`` (with the phase's step count)."""
        steps = self.total_steps(data["items"]) if data.get("items") else None
        return progress.position(meta, self.scenario.num_tasks, steps)

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
        progress.log(f"{progress.task_label(0, self.scenario.num_tasks)} reused from "
                     f"{ckpt_lib.task_model_path(source, 0)}")
        return state.replace(params=params, batch_stats=batch_stats)

    def save(self, state: ContinualState, meta: dict[str, Any], data: dict[str, Any],
             aux: dict[str, ContinualState] | None = None, announce: bool = False) -> None:
        """Checkpoint number ``meta["save"] + 1``; a run asked to stop stops here
        (``interrupts.Interrupted``). ``announce``: say so (the saves inside training)."""
        meta["save"] += 1
        self.timings.flush()
        self.checkpointer.save(meta["save"], state, meta, data, aux)
        self.saves.saved()
        where = self.where(meta, data)
        if meta["task"] < self.scenario.num_tasks and self.saves.stop_requested():
            raise interrupts.Interrupted(self.saves.signal_number(), where)  # says it saved
        if announce:
            progress.log(f"saved checkpoint {meta['save']} ({where})")

    def fit(self, state: ContinualState, t: int, step_fn, desc: str, first: int = 0,
            iterator_state: dict | None = None, checkpoint=None, scalars=None,
            during=None) -> ContinualState:
        """Runs ``step_fn`` over ``config.train.epochs`` shuffled epochs of task ``t``'s items.

        Starts at step ``first`` from ``iterator_state``; calls ``checkpoint(state, step,
        iterator state)`` when ``self.saves`` says so (``core.interrupts``), ``during(state,
        step, steps per epoch, steps, guard)`` after every step (``intask``) and
        ``scalars(state, step index, losses)`` every ``config.train.log_every`` steps. A
        non-finite loss term stops the run before anything is saved (``NonFiniteLoss``).
        The stream is closed on every way out (its grain workers and their shared memory
        released), so an interrupted run leaves nothing behind.
        """
        cfg = self.config.train
        items = self._task_items[t]
        epoch_steps = self.problem.steps_per_epoch(items, cfg.batch_size)
        steps = cfg.epochs * epoch_steps
        iterator = self.problem.train_stream(
            items, self.task_info(t), batch_size=cfg.batch_size, num_epochs=cfg.epochs,
            seed=self.config.seed * 1000 + t, worker_count=cfg.worker_count,
            shard_index=jax.process_index(), shard_count=jax.process_count())
        rng = jax.random.fold_in(jax.random.key(self.config.seed), t)
        guard = guards.NonFiniteGuard(t, desc)
        bar = tqdm(range(first, steps), initial=first, total=steps,
                   desc=f"{progress.task_label(t, self.scenario.num_tasks)} {desc}")
        signals = self.saves.signals
        try:
            if iterator_state:
                iterator.set_state(iterator_state)
            if signals:
                signals.patient = False  # a stop comes after the current step
            for i in bar:
                batch = self.device_batch(owned(next(iterator)))
                state, metrics = step_fn(state, batch, jax.random.fold_in(rng, i))
                guard.update(i, metrics)
                last = i + 1 == steps
                if (i + 1) % cfg.log_every == 0 or last:
                    guard.check()
                    values = {k: float(v) for k, v in metrics.items()}
                    bar.set_postfix_str(progress.postfix(values))
                    if scalars:
                        scalars(state, i, values)
                if during:
                    during(state, i + 1, epoch_steps, steps, guard)
                if checkpoint and not last and self.saves.due(i + 1):
                    guard.check()
                    checkpoint(state, i + 1, iterator.get_state())
            guard.check()
        finally:
            if signals:
                signals.patient = True
            bar.close()
            close = getattr(iterator, "close", None)  # grain iterators; plain ones have none
            if close:
                close()
        return state

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
            self.problem.evaluator.summary(meta["tasks"]) if meta["tasks"] else {},
            meta.get("probes"))

    def write_metrics(self, meta: dict[str, Any]) -> dict[str, Any]:
        metrics = self.metrics(meta)
        if jax.process_index() == 0:
            jsonio.write_json_atomic(os.path.join(self.workdir, "metrics.json"), metrics)
        return metrics
