"""Data-parallel (and optionally FSDP) execution with ``jax.sharding``.

One ``Mesh`` over every device of every process with axes ``("data", "fsdp")``. Batches are
split along their first (clip) axis over both axes; the train state is replicated, except that
with ``fsdp > 1`` each large parameter (and everything with the params' structure: optimiser
moments, teacher, anchor, importance) is split along its largest dimension divisible by the
``fsdp`` size. The train step is jit'd with explicit in/out shardings and a donated state, so
XLA inserts the gradient all-reduce; the computation is the same as on one device (BatchNorm
statistics are over the global batch), which is why sharded and single-device runs agree.

Per-process data: every process feeds its local slice of each global batch and
``jax.make_array_from_process_local_data`` assembles the global array.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(cfg: ml_collections.ConfigDict | None = None) -> Mesh:
    """Mesh ``(data, fsdp)`` over all devices; ``data = -1`` takes what ``fsdp`` leaves."""
    devices = jax.devices()
    fsdp = int(cfg.fsdp) if cfg is not None else 1
    data = int(cfg.data) if cfg is not None else -1
    if data == -1:
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(f"config fields parallel.data={data} x parallel.fsdp={fsdp} must "
                         f"equal the number of devices ({len(devices)}); use data=-1.")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            return P(*([None] * axis + ["fsdp"]))
    return P()


def state_sharding(state: Any, mesh: Mesh, min_fsdp_size: int = 2 ** 16) -> Any:
    """NamedSharding for every leaf of ``state``: replicated, or FSDP-split when large."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, _fsdp_spec(np.shape(x), fsdp, min_fsdp_size)), state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_state(state: Any, mesh: Mesh) -> Any:
    return jax.device_put(state, state_sharding(state, mesh))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch arrays from this process's local slice (split on the clip axis)."""
    sharding = batch_sharding(mesh)
    devices = mesh.devices.size
    clips = next(iter(batch.values())).shape[0] * jax.process_count()
    if clips % devices:
        raise ValueError(f"a global batch of {clips} clips cannot be split over {devices} "
                         f"devices; set config.train.batch_size (and eval_batch_size) to a "
                         f"multiple of {devices}.")
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def jit_train_step(step: Callable, mesh: Mesh, state: Any) -> Callable:
    """jit ``(state, batch, rng) -> (state, metrics)`` with explicit shardings, state donated."""
    state_sh = state_sharding(state, mesh)
    return jax.jit(step, in_shardings=(state_sh, batch_sharding(mesh), replicated(mesh)),
                   out_shardings=(state_sh, replicated(mesh)), donate_argnums=(0,))


def jit_eval_step(step: Callable, mesh: Mesh) -> Callable:
    """jit ``(params, batch_stats, seen, batch) -> confusion`` (params as already placed)."""
    return jax.jit(step, in_shardings=(None, None, replicated(mesh), batch_sharding(mesh)),
                   out_shardings=replicated(mesh))
