"""Guards of a run: nothing bad is saved, nothing is silently mixed.

* ``NonFiniteGuard``: a NaN/Inf loss term stops the run, naming the task, step and terms,
  before the bad state is checkpointed (checked where the loop syncs anyway);
* ``check_workdir_config``: a workdir is continued only with the config that started it (or,
  with ``--allow_config_change``, a changed one that ``write_config`` records in the
  workdir's ``config.json`` history), and a finished run is never continued;
* ``check_first_task_source``: a run reuses another run's trained first task
  (``config.first_task_from``, MiB/PLOP's ``--step_ckpt``) only if both train it identically.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_cavs.core import jsonio
from jax_cavs.core.strategy import Strategy, available, strategy_class


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN/Inf; the run stops before the bad state is checkpointed."""


class NonFiniteGuard:
    """Remembers, on device, the first step whose metrics were not finite and which terms.

    ``update`` adds a few tiny device ops per step and never syncs; ``check`` (called where the
    loop syncs anyway: logging and checkpoints) raises ``NonFiniteLoss`` naming the step, the
    task and the terms.
    """

    def __init__(self, task: int, desc: str):
        """task: 0-based index (messages say ``task + 1``, as every log line does)."""
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
                f"non-finite loss in task {self.task + 1} ({self.desc}) at step {first + 1} of "
                f"the task: terms {', '.join(terms)} are NaN/Inf. The last good checkpoint is intact; "
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


# Fields that say how a run is executed, logged and saved, not what it computes: the parallel
# block (the launch layout, different per process), how often losses are logged and
# checkpoints written (a resume is bitwise wherever the checkpoint was taken). They may change
# between sessions freely. (Not train.worker_count: the saved stream position of a stream with
# worker processes cannot be restored into one without, and the other way round.)
RUN_ONLY_FIELDS = ("parallel", "train.log_every", "train.checkpoint_every",
                   "train.checkpoint_minutes")
HISTORY = "config_history"  # config.json's record of the configs a run was trained under
_START = {"task": 0, "phase": "start", "step": 0}  # where a run's first config took effect


def _experiment_fields(config: dict) -> dict:
    """``config`` without ``RUN_ONLY_FIELDS`` and the history (a copy)."""
    config = json.loads(json.dumps(config))
    config.pop(HISTORY, None)
    for dotted in RUN_ONLY_FIELDS:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


def _read_config(workdir: str) -> dict | None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict,
                         allow_change: bool, complete: bool = False) -> list[str]:
    """The differences (``field: old -> new``) between the config that ``workdir``'s run
    was trained under (its ``config.json``) and ``config``, ``RUN_ONLY_FIELDS`` aside.

    Raises ``ConfigMismatch`` (one line naming the fields) when they differ and the run is
    ``complete`` (its results are final: another config needs another workdir), or when
    they differ and ``allow_change`` is not given.
    """
    old = _read_config(workdir)
    if old is None:
        return []
    diff = config_differences(_experiment_fields(old),
                              _experiment_fields(json.loads(config.to_json())))
    path = os.path.join(workdir, "config.json")
    if diff and complete:
        raise ConfigMismatch(
            f"{workdir} holds a finished run (results in "
            f"{os.path.join(workdir, 'metrics.json')}) trained under another config "
            f"({'; '.join(diff)}); nothing was changed. Use another --workdir for this "
            "config.")
    if diff and not allow_change:
        raise ConfigMismatch(
            f"{workdir} holds a run with a different config ({path}): {'; '.join(diff)}. "
            "Use another --workdir, or pass --allow_config_change to continue under the new "
            "config (recorded in config.json).")
    return diff


def write_config(workdir: str, config: ml_collections.ConfigDict, changes: list[str],
                 position: dict[str, Any] | None) -> None:
    """Writes ``config.json``: ``config``'s fields and, once a run continues under a changed
    config (``--allow_config_change``), ``config_history``: every config the run was trained
    under, in order, each with the checkpoint position where it took effect (``task``,
    0-based as in metrics.json, ``phase``, ``step``) and the ``changes`` from the one before.
    A change before the first checkpoint replaces the config (nothing was trained under it).
    """
    current = json.loads(config.to_json())
    old = _read_config(workdir) or {}
    history = old.get(HISTORY, []) if position is not None else []
    if position is not None and changes:
        history = history or [{**_START, "config": _without_history(old)}]
        at = {k: position[k] for k in _START}
        if len(history) > 1 and {k: history[-1][k] for k in _START} == at:
            history = history[:-1]  # changed again before any training: it trained nothing
            changes = config_differences(_experiment_fields(history[-1]["config"]),
                                         _experiment_fields(current))
        if changes:
            history = history + [{**at, "changes": changes, "config": current}]
    jsonio.write_json_atomic(os.path.join(workdir, "config.json"),
                             {**current, **({HISTORY: history} if history else {})})


def _without_history(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != HISTORY}


# Config fields that determine the first task's training (besides the strategy's objective).
FIRST_TASK_FIELDS = ("seed", "problem", "dataset", "scenario", "model", "model_init", "optimizer.name",
                     "optimizer.lr", "optimizer.weight_decay", "optimizer.grad_clip",
                     "train.batch_size", "train.epochs")


def _field(config: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        config = config.get(key, "<absent>") if isinstance(config, dict) else "<absent>"
    return config


def check_first_task_source(source: str, config: ml_collections.ConfigDict,
                            strategy: Strategy) -> None:
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
    their_objective = (strategy_class(their_name).first_task_objective
                       if their_name in available() else None)
    if objective is None:
        diff.append(f"strategy {strategy.name!r} cannot reuse a first task")
    elif their_objective != objective:
        diff.append(f"first-task objective: {their_name!r} trains it with "
                    f"{their_objective!r}, {strategy.name!r} with {objective!r}")
    if diff:
        raise ValueError(f"config.first_task_from={source!r}: that run's first task was not "
                         f"trained as this run's would be ({'; '.join(diff)}). Train the "
                         "first task in this run (clear first_task_from).")
