"""Multi-process (multi-host) start-up: ``jax.distributed.initialize`` when a run asks for it.

JAX runs one *controller* process per host (or per GPU); the processes find each other through
a coordinator service on process 0 and then behave as one program over the devices of all of
them (``jax.devices()`` is global, ``jax.local_devices()`` this process's share). The call must
happen before anything touches a device, so ``main`` makes it first.

``config.parallel.distributed`` chooses:

* ``"off"``: a single process, never initialised;
* ``"on"``: always initialise. Fields left unset (``coordinator_address=""``,
  ``num_processes=-1``, ``process_id=-1``) are filled in by JAX's cluster auto-detection:
  SLURM (``srun``), Open MPI (``mpirun``), Cloud TPU VMs and GKE (``launch/`` uses this);
* ``"auto"`` (default): initialise when something says this is a multi-process run, that is
  an explicit coordinator (config field or ``JAX_COORDINATOR_ADDRESS``), a SLURM ``srun``
  step with more than one task, or an Open MPI launch; otherwise stay single-process. TPU
  pods are not guessed (detecting one costs a metadata-server query); ``launch/tpu_pod.sh``
  passes ``on``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import jax
import ml_collections
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")
T = TypeVar("T")


def cluster_requested(cfg: ml_collections.ConfigDict, environ: Mapping[str, str]) -> bool:
    """Whether ``cfg`` (``config.parallel``) and the environment ask for several processes.

    Raises:
        ValueError: on an unknown ``config.parallel.distributed`` value.
    """
    mode = cfg.distributed
    if mode not in MODES:
        raise ValueError(f"config field parallel.distributed={mode!r}; valid: "
                         f"{', '.join(MODES)}.")
    if mode != "auto":
        return mode == "on"
    # SLURM_STEP_NUM_TASKS is set inside an ``srun`` step only (not in the batch script).
    slurm_tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1"))
    return bool(cfg.coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS")
                or slurm_tasks > 1 or "OMPI_MCA_orte_hnp_uri" in environ)


def initialize_arguments(cfg: ml_collections.ConfigDict) -> dict[str, object]:
    """Keyword arguments of ``jax.distributed.initialize`` from the explicit config fields.

    Unset fields are left out so JAX auto-detects them (cluster environment variables).

    Raises:
        ValueError: when only some of ``num_processes`` / ``process_id`` are given or they are
            out of range.
    """
    kwargs: dict[str, object] = {}
    if cfg.coordinator_address:
        kwargs["coordinator_address"] = cfg.coordinator_address
    given = (cfg.num_processes >= 0, cfg.process_id >= 0)
    if any(given) and not all(given):
        raise ValueError("config fields parallel.num_processes and parallel.process_id must be "
                         "set together (or both left at -1 for auto-detection).")
    if all(given):
        if not 0 <= cfg.process_id < cfg.num_processes:
            raise ValueError(f"config field parallel.process_id={cfg.process_id} must be in "
                             f"[0, parallel.num_processes={cfg.num_processes}).")
        kwargs.update(num_processes=int(cfg.num_processes), process_id=int(cfg.process_id))
    return kwargs


def maybe_initialize(config: ml_collections.ConfigDict,
                     environ: Mapping[str, str] | None = None) -> bool:
    """Initialises ``jax.distributed`` if ``config.parallel`` / the environment ask for it.

    Call before any other JAX operation. Returns whether the run is multi-process-initialised.
    """
    cfg = config.parallel
    if not cluster_requested(cfg, os.environ if environ is None else environ):
        return False
    try:
        jax.distributed.initialize(**initialize_arguments(cfg))
    except ValueError as error:  # JAX names its own arguments; say which fields set them
        raise ValueError(f"jax.distributed.initialize failed ({error}); outside SLURM, Open MPI "
                         f"and Cloud TPU set config fields parallel.coordinator_address, "
                         f"parallel.num_processes and parallel.process_id.") from error
    print(f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
          f"{jax.local_device_count()} of {jax.device_count()} devices", flush=True)
    return True


def is_primary() -> bool:
    """True on the process that writes run-level files (config, metrics, report, memory logs).

    Checkpoints are different: orbax needs every process to call ``save``.
    """
    return jax.process_index() == 0


def primary_first(fn: Callable[[], T]) -> T:
    """Runs ``fn`` on process 0, then, after a barrier, on the other processes.

    For work with a shared side effect such as building a dataset into ``data_dir`` on first
    use: process 0 builds it, the others then find it built instead of racing to write it.
    """
    if jax.process_count() == 1:
        return fn()
    result = fn() if is_primary() else None
    multihost_utils.sync_global_devices("jax_cavs.distributed.primary_first")
    return result if is_primary() else fn()
