"""Atomic orbax checkpoints of the whole truth of a run.

A checkpoint holds up to five items, written together by one ``CheckpointManager.save``
(orbax writes into a temporary directory and renames it when complete, so a killed run never
leaves a half-written checkpoint that would be picked up):

* ``state``: the ``ContinualState`` pytree (learner, teacher, importance, replay memory,
  masks), its small leaves packed into one array per dtype (``core.packed_tree``: a
  checkpoint of the ``runlocal`` state 3.3 s -> 0.3 s);
* ``layout``: JSON, where ``packed_tree.pack`` put each leaf of ``state`` and ``aux``
  (checkpoints written before packing have none and are restored leaf by leaf, so a run
  started with an older jax_cavs resumes);
* ``meta``: JSON with the run position (task, phase, step within the phase) and the results so
  far (accuracy matrix, per-task metrics); ``meta["aux"]`` names the auxiliary models held;
* ``data``: JSON with the grain iterator state of the task stream in progress (or ``{}``);
* ``aux`` (only while a task's auxiliary models exist, e.g. CMR's visual-only twin): a dict
  name -> the auxiliary model's ``ContinualState``, with the learner's structure.

Beside the rolling checkpoints, the learner at the end of every task's training is kept under
``workdir/models/task_<t>`` (params and BatchNorm statistics only, ``save_task_model``): the
models a user evaluates or deploys later, and the trained first task that other runs reuse
(``config.first_task_from``, MiB/PLOP's ``--step_ckpt``).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jax_cavs.core import packed_tree
from jax_cavs.core.state import ContinualState


class CorruptCheckpoint(ValueError):
    """A checkpoint on disk is damaged or does not match the run's state structure."""


class Checkpointer:
    """Saves and restores ``(state, meta, data)`` under ``workdir/checkpoints``; ``reading``
    opens an existing run without creating or cleaning anything (orbax's ``read_only``
    option would log a warning per setting it overrides)."""

    def __init__(self, workdir: str, max_to_keep: int = 2, reading: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=not reading, cleanup_tmp_directories=not reading,
                enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def position(self, step: int | None = None) -> dict[str, Any] | None:
        """The ``meta`` of the latest (or given) checkpoint, without restoring arrays; None
        when there is none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        try:
            return dict(self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta)
        except Exception as error:  # orbax raises many types for damaged files
            raise _corrupt(self.directory, step, error) from error

    def save(self, step: int, state: ContinualState, meta: dict[str, Any],
             data: dict[str, Any] | None = None,
             aux: dict[str, ContinualState] | None = None) -> None:
        """Writes checkpoint ``step``; ``aux`` must hold exactly the models ``meta["aux"]``
        names (none when absent)."""
        if sorted(aux or {}) != sorted(meta.get("aux", [])):
            raise ValueError(f"checkpoint {step}: aux models {sorted(aux or {})} do not match "
                             f"meta['aux'] = {meta.get('aux', [])}.")
        state_item, state_layout = packed_tree.pack(state)
        items = dict(state=ocp.args.StandardSave(state_item), meta=ocp.args.JsonSave(meta),
                     data=ocp.args.JsonSave(data or {}))
        layouts = {"state": state_layout}
        if aux:
            aux_item, layouts["aux"] = packed_tree.pack(aux)
            items["aux"] = ocp.args.StandardSave(aux_item)
        items["layout"] = ocp.args.JsonSave(layouts)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(self, template: ContinualState, step: int | None = None
                ) -> tuple[ContinualState, dict[str, Any], dict[str, Any],
                           dict[str, ContinualState]]:
        """Restores the latest (or given) checkpoint into the structure of ``template``:
        (state, meta, data, aux); every auxiliary model takes ``template``'s structure."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        packed = self._packed(step)  # checkpoints written before packing have no layout
        try:
            head = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore(),
                **({"layout": ocp.args.JsonRestore()} if packed else {})))
            meta = head.meta
            aux_template = {name: template for name in meta.get("aux", [])}
            if packed:
                layouts = head.layout
                wrong = packed_tree.mismatch(layouts["state"], template)
                if aux_template and not wrong:
                    wrong = packed_tree.mismatch(layouts["aux"], aux_template)
                if wrong:
                    raise ValueError(f"the saved state does not match this run's ({wrong})")
            target = _abstract if packed else _leaf_by_leaf
            items = dict(state=ocp.args.StandardRestore(target(template)),
                         meta=ocp.args.JsonRestore(), data=ocp.args.JsonRestore())
            if aux_template:
                items["aux"] = ocp.args.StandardRestore(target(aux_template))
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            state, aux = restored.state, dict(restored.aux) if aux_template else {}
            if packed:
                state = packed_tree.unpack(state, layouts["state"], template)
                if aux_template:
                    aux = packed_tree.unpack(restored.aux, layouts["aux"], aux_template)
        except Exception as error:  # orbax/tensorstore raise many types for damaged files
            raise _corrupt(self.directory, step, error) from error
        return state, dict(restored.meta), dict(restored.data or {}), aux

    def _packed(self, step: int) -> bool:
        return os.path.isdir(os.path.join(self.directory, str(step), "layout"))

    def restore_raw(self, step: int | None = None) -> dict[str, Any]:
        """The latest (or given) checkpoint as plain nested dicts of arrays (no template),
        for inspection and tools."""
        step = self.latest_step() if step is None else step
        packed = self._packed(step)
        items = dict(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore(),
                     data=ocp.args.JsonRestore())
        if packed:
            items["layout"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = (packed_tree.unpack_raw(restored.state, restored.layout["state"]) if packed
                 else restored.state)
        return {"state": state, "meta": restored.meta, "data": restored.data}

    def close(self) -> None:
        self._manager.close()


def _abstract(template) -> dict:
    """The restore target of ``packed_tree.pack(template)``'s item."""
    return packed_tree.abstract_item(template, ocp.utils.to_shape_dtype_struct)


def _leaf_by_leaf(template):
    """The restore target of a checkpoint written before packing: ``template``'s leaves."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)


def _corrupt(directory: str, step: int, error: Exception) -> CorruptCheckpoint:
    path = os.path.join(directory, str(step))
    return CorruptCheckpoint(
        f"checkpoint {path} cannot be restored ({type(error).__name__}: {error}). Delete "
        f"{path} to resume from the previous checkpoint, or start a fresh --workdir.")


def read_position(workdir: str) -> dict[str, Any] | None:
    """``Checkpointer.position`` of ``workdir``'s run, touching nothing (None: no checkpoint
    yet, or no workdir)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    checkpointer = Checkpointer(workdir, reading=True)
    try:
        return checkpointer.position()
    finally:
        checkpointer.close()


def task_model_path(workdir: str, task: int, kind: str = "task") -> str:
    """``models/task_<t>``: the learner after task t's training; ``models/best_<t>``: the best
    validated learner during it (``core.validation``)."""
    return os.path.join(os.path.abspath(workdir), "models", f"{kind}_{task}")


def save_task_model(workdir: str, task: int, params, batch_stats, kind: str = "task") -> None:
    """Writes the learner after task ``task``'s training (atomic; replaces an older copy)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(task_model_path(workdir, task, kind),
                          {"params": params, "batch_stats": batch_stats}, force=True)
        checkpointer.wait_until_finished()


def load_task_model(workdir: str, task: int, params, batch_stats, kind: str = "task"
                    ) -> tuple[Any, Any]:
    """(params, batch_stats) saved by ``save_task_model``, restored into the structure,
    shapes and shardings of the given ones; a missing or mismatching model is named."""
    path = task_model_path(workdir, task, kind)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path} does not exist: the run in {workdir} has not finished training task "
            f"{task + 1} (or predates per-task models). Finish that run first, or clear "
            f"config.first_task_from.")
    template = {"params": params, "batch_stats": batch_stats}
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            # Compared before restoring: a restore into other shapes fails half-way and
            # leaves orbax's pending reads to fail again when they are collected.
            mismatch = _shape_mismatch(checkpointer.metadata(path).item_metadata.tree,
                                       abstract)
            if not mismatch:
                restored = checkpointer.restore(path, abstract)
        except Exception as error:  # damaged files
            mismatch = f"{type(error).__name__}: {error}"
    if mismatch:
        raise CorruptCheckpoint(f"model {path} cannot be restored into this run's model "
                                f"({mismatch}); the two runs must use the same model config.")
    return restored["params"], restored["batch_stats"]


def _shape_mismatch(stored, abstract) -> str:
    """The leaves whose structure or shape differ between a saved tree's metadata and the
    template (a few named), or ""."""
    def shapes(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves}

    have, want = shapes(stored), shapes(abstract)
    wrong = [f"{k}: saved {have.get(k, 'absent')}, expected {want.get(k, 'absent')}"
             for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    return "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
