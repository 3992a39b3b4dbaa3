"""The continual experiment: the same loop for every method.

For each task of the scenario: ``begin_task`` (masks, teacher snapshot, fresh optimiser at
the task's learning rate), ``prepare_task`` (strategy passes over the task data), a grain
stream of the task's videos mixed with the strategy's replay videos, jit'd train steps,
``end_task`` (importance, memory selection), evaluation on the common test set over every
class seen so far, one row of the accuracy matrix, ``metrics.json`` and an atomic orbax
checkpoint. Re-running on the same workdir resumes after the last completed task.
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
import optax
from tqdm import tqdm

from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import distributed
from jax_cavs.core import parallel
from jax_cavs.core import report
from jax_cavs.problems.cavs import strategies
from jax_cavs.core import steps as train_lib
from jax_cavs.data import sources
from jax_cavs.problems.cavs import scenarios
from jax_cavs.problems.cavs import streams
from jax_cavs.cl import metrics as cl_metrics
from jax_cavs.problems.cavs import metrics as seg_metrics
from jax_cavs.models import weights as weights_lib
from jax_cavs.problems.cavs.model import build_model
from jax_cavs.core.state import ContinualState, create_state
from jax_cavs.core.strategy import TaskContext, TaskInfo


def build_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam/AdamW (+ global-norm clipping) with the learning rate as a state hyper-parameter,
    so each task can start a fresh optimiser at its own rate without re-compiling."""
    if cfg.name not in ("adam", "adamw", "sgd"):
        raise ValueError(f"config field optimizer.name={cfg.name!r}; valid: adam, adamw, sgd.")

    def make(learning_rate):
        core = {"adam": lambda: optax.adam(learning_rate),
                "adamw": lambda: optax.adamw(learning_rate, weight_decay=cfg.weight_decay),
                "sgd": lambda: optax.sgd(learning_rate, momentum=0.9, nesterov=True)}[cfg.name]()
        parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
        if cfg.name == "sgd" and cfg.weight_decay > 0:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        return optax.chain(*parts, core)

    return optax.inject_hyperparams(make)(learning_rate=cfg.lr)


def fresh_optimizer(state: ContinualState, learning_rate: float) -> ContinualState:
    """A new optimiser state (each task starts fresh, as in PLOP/MiB) at ``learning_rate``."""
    opt_state = state.tx.init(state.params)
    hyper = dict(opt_state.hyperparams, learning_rate=jnp.asarray(learning_rate, jnp.float32))
    return state.replace(opt_state=opt_state._replace(hyperparams=hyper))


def group_scores(confusion: np.ndarray, scenario: scenarios.Scenario,
                 seen: np.ndarray) -> dict[str, Any]:
    """Scores after a task from the confusion matrix accumulated over the whole test set.

    Per-class IoU and means over the classes present in the ground truth (MiB/PLOP). ``old``
    is background plus the first task's classes and ``new`` every class learned after it, the
    columns of the CMR tables ("1-60 | 61-70 | all", spec_cavs §1.3); ``groups`` scores each
    task's classes separately, one row of the accuracy matrix.
    """
    _, per_class = seg_metrics.miou(confusion)

    def score(mask: np.ndarray) -> float | None:
        value = float(seg_metrics.group_miou(per_class, confusion, mask))
        return None if np.isnan(value) else value

    first = scenario.group_mask(0)
    return {"per_class_iou": [None if np.isnan(v) else float(v) for v in np.asarray(per_class)],
            "groups": [score(scenario.group_mask(j)) for j in range(len(scenario.report_groups))],
            "miou": {"old": score(first), "new": score(seen & ~first), "all": score(seen)}}


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN/Inf; the run stops before the bad state is checkpointed."""


class NonFiniteGuard:
    """Remembers, on device, the first step whose metrics were not finite and which terms.

    ``update`` adds a few tiny device ops per step and never syncs; ``check`` (called where the
    loop syncs anyway: logging and checkpoints) raises ``NonFiniteLoss`` naming the step, the
    task and the terms.
    """

    def __init__(self, task: int, desc: str):
        self.task, self.desc = task, desc
        self.first = jnp.asarray(-1, jnp.int32)
        self.names: list[str] = []
        self.flags = None

    def update(self, step: int, metrics: dict[str, jnp.ndarray]) -> None:
        self.names = list(metrics)
        flags = jnp.stack([~jnp.isfinite(metrics[k]) for k in self.names])
        new = (self.first < 0) & flags.any()
        self.first = jnp.where(new, step, self.first)
        self.flags = flags if self.flags is None else jnp.where(new, flags, self.flags)

    def check(self) -> None:
        first = int(self.first)
        if first >= 0:
            terms = [n for n, bad in zip(self.names, np.asarray(self.flags)) if bad]
            raise NonFiniteLoss(
                f"non-finite loss in task {self.task} ({self.desc}) at step {first} of the task: "
                f"terms {', '.join(terms)} are NaN/Inf. The last good checkpoint is intact; "
                f"lower config.optimizer.lr or check the data, then re-run to resume.")


class ConfigMismatch(ValueError):
    """The workdir belongs to a run with a different config."""


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``field: old -> new`` for every leaf that differs between two nested config dicts."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict,
                         allow_change: bool) -> None:
    """Refuses to continue a run whose saved ``config.json`` differs from ``config``."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    # The parallel block is the launch layout (it differs per process), not the experiment.
    old.pop("parallel", None)
    new = {k: v for k, v in json.loads(config.to_json()).items() if k != "parallel"}
    diff = config_differences(old, new)
    if diff and not allow_change:
        raise ConfigMismatch(
            f"{workdir} holds a run with a different config ({path}):\n  " + "\n  ".join(diff)
            + "\nUse another --workdir, or pass --allow_config_change to continue anyway.")


# Config fields that determine the first task's training (besides the strategy's objective).
FIRST_TASK_FIELDS = ("seed", "dataset", "scenario", "model", "model_init", "optimizer.name",
                     "optimizer.lr", "optimizer.weight_decay", "optimizer.grad_clip",
                     "train.batch_size", "train.epochs")


def _field(config: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        config = config.get(key, "<absent>") if isinstance(config, dict) else "<absent>"
    return config


def check_first_task_source(source: str, config: ml_collections.ConfigDict,
                            strategy: strategies.Strategy) -> None:
    """Refuses to reuse the first task of a run that trained it differently."""
    path = os.path.join(source, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.first_task_from={source!r}: {path} does not exist; "
                                f"give the --workdir of a run of the same experiment.")
    with open(path) as f:
        theirs = json.load(f)
    ours = json.loads(config.to_json())
    diff = config_differences({k: _field(theirs, k) for k in FIRST_TASK_FIELDS},
                              {k: _field(ours, k) for k in FIRST_TASK_FIELDS})
    objective = strategy.first_task_objective
    their_name = _field(theirs, "strategy.name")
    their_objective = (strategies.strategy_class(their_name).first_task_objective
                       if their_name in strategies.available() else None)
    if objective is None:
        diff.append(f"strategy {strategy.name!r} cannot reuse a first task")
    elif their_objective != objective:
        diff.append(f"first-task objective: {their_name!r} trains it with "
                    f"{their_objective!r}, {strategy.name!r} with {objective!r}")
    if diff:
        raise ValueError(f"config.first_task_from={source!r}: that run's first task was not "
                         f"trained as this run's would be:\n  " + "\n  ".join(diff)
                         + "\nTrain the first task in this run (clear first_task_from).")


def write_json_atomic(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


@dataclasses.dataclass
class Experiment:
    """Everything built once per run; ``run()`` executes (or resumes) the task loop."""

    config: ml_collections.ConfigDict
    workdir: str
    dataset: Any
    scenario: scenarios.Scenario
    model: Any
    strategy: strategies.Strategy
    state: ContinualState
    checkpointer: ckpt_lib.Checkpointer

    @classmethod
    def create(cls, config: ml_collections.ConfigDict, workdir: str,
               allow_config_change: bool = False) -> "Experiment":
        check_workdir_config(workdir, config, allow_config_change)
        hparams = {k: v for k, v in config.strategy.items() if k != "name"}
        strategy = strategies.get_strategy(config.strategy.name, hparams)
        if config.first_task_from:
            check_first_task_source(os.path.expanduser(config.first_task_from), config,
                                    strategy)
        dataset = distributed.primary_first(lambda: sources.load_dataset(
            config.dataset.name, config.dataset.config, config.dataset.data_dir))
        sc = config.scenario
        scenario = scenarios.build_scenario(
            dataset.index["train"].classes, dataset.index["test"].classes,
            dataset.num_classes, sc.split, mode=sc.mode, subset=sc.subset,
            disjoint_rule=sc.disjoint_rule, class_order=sc.class_order,
            joint=strategy.single_task, seed=sc.louvain_seed)
        model = build_model(model_config(config.model, dataset.num_classes))
        state = init_state(config, model, strategy, dataset)
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
        return cls(config, workdir, dataset, scenario, model, strategy, state,
                   ckpt_lib.Checkpointer(workdir))

    # -- jit'd functions, built once ------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.config.dataset.image_size

    def __post_init__(self):
        self.mesh = parallel.make_mesh(self.config.parallel)
        self.state = self.place(self.state)
        self._steps: dict[tuple, Any] = {}
        self._task_items: dict[int, list] = {}
        self.writer = report.ScalarWriter(self.workdir) if jax.process_index() == 0 else None
        self._eval_step = parallel.jit_eval_step(
            train_lib.make_eval_step(self.model, self.dataset.num_classes), self.mesh,
            self.state)
        model = self.model
        forward = parallel.jit_forward(lambda p, bs, batch: train_lib.forward(
            model, p, bs, batch, train=False)[0], self.mesh, self.state)
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
                        current=sc.current_mask(t), old=sc.old_mask(t), seen=sc.seen_mask(t))

    def batches(self, indices, mask: np.ndarray, split: str = "train", whole: bool = False):
        """Eval-mode batches over ``indices`` of ``split``, labels restricted to ``mask``:
        this process's slice of every batch, or with ``whole`` every batch on every process
        (host passes whose results every process needs, ``parallel`` module doc)."""
        shard_index, shard_count = (0, 1) if whole else (jax.process_index(),
                                                         jax.process_count())
        return streams.eval_batches(
            self.dataset.sources[split], indices, seen_mask=mask,
            batch_size=self.config.train.eval_batch_size, image_size=self.image_size,
            worker_count=self.config.train.worker_count, shard_index=shard_index,
            shard_count=shard_count)

    def task_context(self, t: int) -> TaskContext:
        info = self.task_info(t)
        masks = {"current": info.current, "seen": info.seen}

        def fit(state, strategy, zero_audio=False, desc="twin"):
            state = fresh_optimizer(strategy.begin_task(state, info), self.learning_rate(t))
            return self.fit(self.place(state), t, self.step_fn(strategy, zero_audio), desc)

        return TaskContext(
            task=info, train_indices=self.scenario.tasks[t].train_indices,
            batches=lambda indices, labels="current": self.batches(indices, masks[labels],
                                                                   whole=True),
            device_batch=lambda batch: self.device_batch(batch, whole=True),
            forward=self.forward, model=self.model, fit=fit,
            new_state=lambda strategy, seed: self.place(init_state(
                self.config, self.model, strategy, self.dataset, seed)),
            workdir=self.workdir, rng=np.random.default_rng([self.config.seed, t]))

    def learning_rate(self, t: int) -> float:
        return self.config.optimizer.lr if t == 0 else self.config.optimizer.lr_incremental

    def step_fn(self, strategy: strategies.Strategy, zero_audio: bool):
        """The jit'd train step of ``strategy`` (built once per strategy and audio mode)."""
        key = (strategy, zero_audio)
        if key not in self._steps:
            self._steps[key] = parallel.jit_train_step(
                train_lib.make_train_step(self.model, strategy, zero_audio=zero_audio),
                self.mesh, self.state)
        return self._steps[key]

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self, state: ContinualState, t: int) -> dict[str, Any]:
        seen = self.scenario.seen_mask(t)
        indices = self.scenario.test_indices
        num = -(-len(indices) // self.config.train.eval_batch_size)
        confusion = 0
        for batch in tqdm(self.batches(indices, seen, split="test"), total=num,
                          desc=f"task {t} eval", leave=False):
            confusion = confusion + self._eval_step(state.params, state.batch_stats,
                                                    jnp.asarray(seen), self.device_batch(batch))
        return group_scores(np.asarray(jax.device_get(confusion)), self.scenario, seen)

    # -- the loop -----------------------------------------------------------------------
    # A task runs in phases, each ending in an atomic checkpoint, so a killed run resumes
    # exactly: "start" (nothing done yet) -> begin/prepare, then "train" (``step`` optimiser
    # steps done, grain iterator state saved) -> "trained" (training finished) -> end_task and
    # evaluation -> the next task's "start".
    def run(self) -> dict[str, Any]:
        state, meta, data = self.state, {"task": 0, "phase": "start", "step": 0, "save": 0,
                                         "tasks": [], "accuracy_matrix": []}, {}
        if self.checkpointer.latest_step() is not None:
            state, meta, data = self.checkpointer.restore(state)
            state = self.place(state)
            print(f"[jax_cavs] Resuming from {self.checkpointer.directory}: task {meta['task']}, "
                  f"phase {meta['phase']}, step {meta['step']}.", file=sys.stderr, flush=True)
        while meta["task"] < self.scenario.num_tasks:
            t = meta["task"]
            ctx = self.task_context(t)
            if meta["phase"] == "start":
                state = self.begin_task(state, ctx)
                meta.update(phase="train", step=0)
                data = {"items": self._task_items[t], "iterator": None}
            self._task_items[t] = [tuple(item) for item in data["items"]]
            if meta["phase"] == "train":
                if t == 0 and self.config.first_task_from:
                    state = self.reuse_first_task(state)
                else:
                    state = self.fit(state, t, self.step_fn(self.strategy, False), "train",
                                     meta=meta, iterator_state=data.get("iterator"))
                ckpt_lib.save_task_model(self.workdir, t, state.params, state.batch_stats)
                meta.update(phase="trained")
                self.save(state, meta, {"items": data["items"]})
            start = time.time()
            state = self.place(self.strategy.end_task(state, ctx))
            scores = self.evaluate(state, t)
            meta["tasks"].append(self.task_record(t, scores))
            meta["accuracy_matrix"].append(scores["groups"])
            meta.update(task=t + 1, phase="start", step=0)
            self.save(state, meta, {})
            self.write_outputs(state, meta, t, time.time() - start)
        self.state = state
        metrics = self.write_metrics(meta)
        print_summary(metrics)
        return metrics

    def begin_task(self, state: ContinualState, ctx: TaskContext) -> ContinualState:
        """begin_task, a fresh optimiser at the task's rate, prepare_task, the replay items."""
        state = self.strategy.begin_task(state, ctx.task)
        state = fresh_optimizer(state, self.learning_rate(ctx.task.index))
        state = self.place(self.strategy.prepare_task(state, ctx))
        self._task_items[ctx.task.index] = streams.training_items(
            ctx.train_indices, self.strategy.replay_ids(state, ctx))
        return state

    def reuse_first_task(self, state: ContinualState) -> ContinualState:
        """The learner after the first task's training, taken from the run in
        ``config.first_task_from`` instead of training it again (MiB/PLOP's ``--step_ckpt``).

        Valid when both runs train the first task identically: the same fields
        ``FIRST_TASK_FIELDS`` and the same ``first_task_objective`` (checked in ``create``,
        ``check_first_task_source``). This strategy's own
        ``end_task`` (importance, memory selection, CMR's twin) then runs as usual, so a
        comparison of methods trains the shared first task once.
        """
        source = os.path.expanduser(self.config.first_task_from)
        params, batch_stats = ckpt_lib.load_task_model(source, 0, state.params,
                                                        state.batch_stats)
        print(f"[jax_cavs] task 1 reused from {ckpt_lib.task_model_path(source, 0)}",
              file=sys.stderr, flush=True)
        return state.replace(params=params, batch_stats=batch_stats)

    def save(self, state: ContinualState, meta: dict[str, Any], data: dict[str, Any]) -> None:
        meta["save"] += 1
        self.checkpointer.save(meta["save"], state, meta, data)

    def fit(self, state: ContinualState, t: int, step_fn, desc: str,
            meta: dict[str, Any] | None = None, iterator_state: dict | None = None
            ) -> ContinualState:
        """Runs ``step_fn`` over ``config.train.epochs`` shuffled epochs of task ``t``'s items.

        With ``meta`` (the learner's run position) it starts at ``meta["step"]`` from
        ``iterator_state`` and checkpoints every ``config.train.checkpoint_every`` steps.
        A non-finite loss term stops the run before anything is saved (``NonFiniteLoss``).
        """
        cfg = self.config.train
        items = self._task_items[t]
        steps = cfg.epochs * streams.steps_per_epoch(len(items), cfg.batch_size)
        iterator = streams.train_iterator(
            self.dataset.sources["train"], items, current_mask=self.scenario.current_mask(t),
            seen_mask=self.scenario.seen_mask(t), batch_size=cfg.batch_size,
            num_epochs=cfg.epochs, seed=self.config.seed * 1000 + t, image_size=self.image_size,
            worker_count=cfg.worker_count, shard_index=jax.process_index(),
            shard_count=jax.process_count())
        first = meta["step"] if meta else 0
        if iterator_state:
            iterator.set_state(iterator_state)
        rng = jax.random.fold_in(jax.random.key(self.config.seed), t)
        guard = NonFiniteGuard(t, desc)
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
                if meta is not None and self.writer:
                    self.writer.scalars(int(state.step), {
                        **{f"train/{k}": v for k, v in values.items()},
                        "train/learning_rate": float(state.opt_state.hyperparams["learning_rate"])})
            if meta is not None and cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 \
                    and not last:
                guard.check()
                meta["step"] = i + 1
                self.save(state, meta, {"items": [list(x) for x in items],
                                        "iterator": iterator.get_state()})
        guard.check()
        return state

    def task_record(self, t: int, scores: dict[str, Any]) -> dict[str, Any]:
        return {"task": t, "classes": list(self.scenario.tasks[t].classes),
                "miou": scores["miou"], "per_class_iou": scores["per_class_iou"]}

    def metrics(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The ``metrics.json`` content for the tasks finished so far."""
        matrix = [list(row) for row in meta["accuracy_matrix"]]  # None = undefined (null)
        metrics = {"method": self.strategy.name, "scenario": {
            "split": self.scenario.name, "mode": self.scenario.mode,
            "subset": self.scenario.subset, "class_order": list(self.scenario.class_order),
            "groups": [list(g) for g in self.scenario.report_groups]},
            "tasks": meta["tasks"], "accuracy_matrix": matrix}
        if matrix and len(matrix) == len(matrix[0]):
            metrics["summary"] = cl_metrics.summarize(np.asarray(matrix))
        return metrics

    def write_metrics(self, meta: dict[str, Any]) -> dict[str, Any]:
        metrics = self.metrics(meta)
        if jax.process_index() == 0:
            write_json_atomic(os.path.join(self.workdir, "metrics.json"), metrics)
        return metrics

    def write_outputs(self, state: ContinualState, meta: dict[str, Any], t: int,
                      seconds: float) -> None:
        """After task ``t``: metrics.json, TensorBoard mIoU scalars, timings and the report."""
        self.write_metrics(meta)
        examples = self.overlay_examples(state, t)  # runs the model: every process takes part
        if jax.process_index() != 0:
            return
        miou = meta["tasks"][-1]["miou"]
        self.writer.scalars(t, {f"miou/{k}": v for k, v in miou.items()})
        timings_path = os.path.join(self.workdir, "timings.json")
        timings = {}
        if os.path.exists(timings_path):
            with open(timings_path) as f:
                timings = json.load(f)
        timings[str(t)] = round(seconds, 1)
        write_json_atomic(timings_path, timings)
        report.write_report(self.workdir, list(self.dataset.class_names), examples)

    def overlay_examples(self, state: ContinualState, t: int) -> list[dict[str, Any]]:
        """One test clip per class group (old: first task; new: this task): its frame with
        the most pixels of that group, the ground truth and the prediction."""
        seen = self.scenario.seen_mask(t)
        groups = [("old", self.scenario.group_mask(0))]
        if t > 0:
            groups.append(("new", self.scenario.current_mask(t)))
        source = self.dataset.sources["test"]
        examples = []
        for name, mask in groups:
            for index in self.scenario.test_indices:
                classes = self.dataset.index["test"].classes[index]
                if not any(mask[c] for c in classes):
                    continue
                batch = next(self.batches([index], seen, split="test", whole=True))
                logits = np.asarray(self.forward(state.params, state.batch_stats, batch).logits)
                pred = np.argmax(np.where(seen, logits[0], train_lib.NEG_INF), axis=-1)
                labels = np.asarray(batch["labels"][0])
                frame = int(np.argmax([(np.isin(l, np.flatnonzero(mask))).sum() for l in labels]))
                record = source[int(index)]
                image = np.asarray(record["frames"][frame])
                if image.shape[0] != self.image_size:
                    image, _ = streams.transforms.eval_resize(
                        image[None], np.asarray(record["labels"][frame])[None], self.image_size)
                    image = image[0]
                examples.append({"frame": image, "label": labels[frame].astype(np.int32),
                                 "pred": pred[frame].astype(np.int32),
                                 "title": f"{name} classes: test clip {index}, frame {frame}"})
                break
        return examples


def model_config(cfg: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    """The model fields of the config plus the dataset's class count (background included)."""
    return ml_collections.ConfigDict({**cfg.to_dict(), "num_classes": num_classes})


def load_pretrained(variables: dict, cfg: ml_collections.ConfigDict) -> dict:
    """ImageNet ResNet / VGGish weights into the backbone and audio encoder, when configured
    (``config.model_init``); missing files and mismatching keys or shapes are named."""
    dont_load = tuple(cfg.dont_load)
    if cfg.resnet:
        variables = weights_lib.load_torchvision_resnet(
            variables, os.path.expanduser(cfg.resnet), dont_load=dont_load)
    if cfg.vggish:
        variables = weights_lib.load_torchvggish(
            variables, os.path.expanduser(cfg.vggish), dont_load=dont_load)
    return variables


def init_state(config, model, strategy, dataset, seed: int | None = None) -> ContinualState:
    """Initial variables from a dummy clip, wrapped in a fresh ``ContinualState``."""
    size, frames = config.dataset.image_size, dataset.num_frames
    dummy = (jnp.zeros((1, frames, size, size, 3)), jnp.zeros((1, frames, 96, 64)),
             jnp.ones((1, frames)))
    variables = jax.jit(lambda rng: model.init(rng, *dummy, train=False))(
        jax.random.key(config.seed if seed is None else seed))
    variables = load_pretrained(variables, config.model_init)
    return create_state(variables, build_optimizer(config.optimizer), dataset.num_classes,
                        strategy.memory_capacity(dataset.num_classes),
                        strategy.uses_importance, strategy.init_extras(dataset.num_classes))


def _fmt(value) -> str:
    return "  -  " if value is None else f"{100 * value:5.1f}"


def print_summary(metrics: dict[str, Any]) -> None:
    """The end-of-run table: old / new / all mIoU (%) after every task, then CL metrics."""
    print(f"\n{metrics['method']} on {metrics['scenario']['split']} "
          f"{metrics['scenario']['mode']} ({metrics['scenario']['subset']})")
    print(f"{'task':>4} | {'old':>5} | {'new':>5} | {'all':>5}")
    for row in metrics["tasks"]:
        m = row["miou"]
        print(f"{row['task']:>4} | {_fmt(m['old'])} | {_fmt(m['new'])} | {_fmt(m['all'])}")
    for key, value in metrics.get("summary", {}).items():
        if key != "num_tasks":
            print(f"{key}: {100 * value:.1f}")
