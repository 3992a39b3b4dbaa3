"""Data-parallel (and optionally FSDP) execution with ``jax.sharding``, on one or many hosts.

One ``Mesh`` over every device of every process with axes ``("data", "fsdp")``. Batches are
split along their first (clip) axis over both axes; the train state is replicated, except that
with ``fsdp > 1`` each large parameter is split along its largest dimension divisible by the
``fsdp`` size. The rule looks at a leaf's shape only, so everything with the params' structure
(optimiser moments, teacher, anchor, importance, path integral) gets exactly the params'
layout. The train step is jit'd with explicit in/out shardings and a donated state, so XLA
inserts the gradient all-reduce; the computation is the one of a single device (BatchNorm
statistics are over the global batch), which is why sharded and single-device runs agree up to
the order of floating-point reductions.

Host data comes in two kinds:

* training and test batches: every process holds *its slice* of each global batch (the grain
  streams are sharded by process) and ``shard_batch`` assembles the global array;
* host passes that need every result on every process (memory selection, collision statistics,
  report overlays): every process reads the *whole* batch (``shard_batch(..., whole=True)``),
  so the computation is still split over all devices while each process knows every clip.
  ``jit_forward`` returns its outputs replicated on every device (``np.asarray`` works on
  every process); results of other jit'd passes over such a batch stay split over the devices
  and are read with ``to_host``. Every process then computes the same selection from the same
  numbers, without further communication.

Every function that runs a computation on global arrays (``jit_*`` callables, ``shard_state``,
``to_host``) must be called by all processes in the same order: JAX is multi-controller.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_cavs.core import xla

BATCH_AXES = ("data", "fsdp")


def make_mesh(cfg: ml_collections.ConfigDict | None = None) -> Mesh:
    """Mesh ``(data, fsdp)`` over all devices of all processes (``config.parallel``).

    ``data = -1`` takes what ``fsdp`` leaves. Device order comes from
    ``mesh_utils.create_device_mesh`` (the ICI ring order on TPU; plain order elsewhere).
    """
    devices = jax.devices()
    fsdp = int(cfg.fsdp) if cfg is not None else 1
    data = int(cfg.data) if cfg is not None else -1
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"config field parallel.fsdp={fsdp} must divide the number of "
                         f"devices ({len(devices)}).")
    if data == -1:
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(f"config fields parallel.data={data} x parallel.fsdp={fsdp} must "
                         f"equal the number of devices ({len(devices)}); use data=-1.")
    return Mesh(mesh_utils.create_device_mesh((data, fsdp), devices), BATCH_AXES)


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """``P()`` (replicated), or ``fsdp`` on the largest axis of ``shape`` divisible by it.

    Leaves with fewer than ``min_size`` elements stay replicated: splitting them saves little
    memory and adds an all-gather per use.
    """
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            return P(*([None] * axis + ["fsdp"]))
    return P()


def state_sharding(state: Any, mesh: Mesh, min_fsdp_size: int = 2 ** 16) -> Any:
    """NamedSharding for every leaf of ``state`` (a pytree): replicated, or FSDP-split."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), fsdp, min_fsdp_size)), state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Clip axis split over every device (``data`` x ``fsdp``)."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    if sharding.is_fully_addressable or (isinstance(x, jax.Array)
                                         and not x.is_fully_addressable):
        return jax.device_put(x, sharding)  # local placement, or a global -> global reshard
    # A process-local value (host-side updates between tasks are deterministic, so every
    # process holds the same one): each process fills its own devices from it.
    return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))


def shard_state(state: Any, mesh: Mesh) -> Any:
    """Lays every leaf of ``state`` out on the mesh (no-op for leaves already placed)."""
    return jax.tree_util.tree_map(_place, state, state_sharding(state, mesh))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, *, whole: bool = False
                ) -> dict[str, jax.Array]:
    """Global batch arrays, split on the clip axis over all devices.

    Args:
        batch: host arrays, each [B_host, ...]: this process's slice of the global batch
            (``whole=False``; the global batch has ``B_host * process_count`` clips), or the
            whole global batch, identical on every process (``whole=True``).
        mesh: from ``make_mesh``.

    Raises:
        ValueError: if the global batch does not split evenly over the devices.
    """
    sharding = batch_sharding(mesh)
    devices = mesh.devices.size
    local = next(iter(batch.values())).shape[0]
    clips = local if whole else local * jax.process_count()
    if clips % devices:
        raise ValueError(f"a global batch of {clips} clips cannot be split over {devices} "
                         f"devices; set config.train.batch_size and eval_batch_size to "
                         f"multiples of {devices}.")
    return {k: jax.make_array_from_process_local_data(
        sharding, np.asarray(v), (clips,) + np.shape(v)[1:]) for k, v in batch.items()}


def to_host(tree: Any) -> Any:
    """numpy copies of every leaf; arrays split over processes are gathered first.

    ``np.asarray`` alone fails on an array whose shards live on other processes; use this for
    results of one's own jit'd passes over ``shard_batch`` inputs (all processes must call it).
    """
    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree_util.tree_map(leaf, tree)


def jit_train_step(step: Callable, mesh: Mesh, state: Any) -> Callable:
    """jit ``(state, batch, rng) -> (state, metrics)`` with explicit shardings, state donated.

    ``state`` only provides the layout (``state_sharding``); metrics come back replicated.
    """
    state_sh = state_sharding(state, mesh)
    return xla.jit(step, in_shardings=(state_sh, batch_sharding(mesh), replicated(mesh)),
                   out_shardings=(state_sh, replicated(mesh)), donate_argnums=(0,))


def _model_shardings(mesh: Mesh, state: Any) -> tuple[Any, Any]:
    return state_sharding(state.params, mesh), state_sharding(state.batch_stats, mesh)


def jit_eval_step(step: Callable, mesh: Mesh, state: Any) -> Callable:
    """jit ``(params, batch_stats, seen, batch, stats) -> stats`` (stats replicated).

    params and batch_stats take ``state``'s layout (also for the teacher's or a twin's, which
    share the structure), so FSDP-split parameters are consumed where they live.
    """
    params_sh, stats_sh = _model_shardings(mesh, state)
    return xla.jit(step, in_shardings=(params_sh, stats_sh, replicated(mesh),
                                       batch_sharding(mesh), replicated(mesh)),
                   out_shardings=replicated(mesh))


def jit_forward(forward: Callable, mesh: Mesh, state: Any) -> Callable:
    """jit ``(params, batch_stats, batch) -> outputs`` with outputs replicated on every device.

    For host passes between tasks: every process can read every output with ``np.asarray``.
    """
    params_sh, stats_sh = _model_shardings(mesh, state)
    return xla.jit(forward, in_shardings=(params_sh, stats_sh, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def batches_to_devices(config: ml_collections.ConfigDict, devices: int
                       ) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose global train / eval batch sizes are rounded up to multiples
    of ``devices`` (``config.train.batch_to_devices``: runlocal runs as written on any number
    of devices, e.g. 8 simulated CPUs; config.json keeps the sizes as configured)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for field in ("batch_size", "eval_batch_size"):
        size = config.train[field]
        rounded = -(-size // devices) * devices
        if rounded != size:
            print(f"[jax_cavs] train.{field} {size} -> {rounded}: a multiple of the {devices} "
                  f"devices (train.batch_to_devices)", file=sys.stderr, flush=True)
            config.train[field] = rounded
    return config
