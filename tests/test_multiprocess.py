"""Tests of multi-process runs: when ``jax.distributed`` is initialised (jax_cavs/distributed.py),
the placement primitives of jax_cavs/parallel.py across two real processes, and
``launch/local_multiprocess.sh``, whose processes must together produce the single-process
run's results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jax_cavs.core import distributed
from test_parallel import (METRICS_ATOL, REPO, RUNLOCAL, assert_metrics_close, finish,
                           load_metrics, start_main, subprocess_env)

# Global batches of 4 clips: divisible by 2 processes, fewer steps than runlocal's 2.
RUN_FLAGS = ("--config.train.epochs=1", "--config.train.batch_size=4",
             "--config.train.eval_batch_size=4")


def parallel_config(**fields) -> ml_collections.ConfigDict:
    defaults = dict(distributed="auto", coordinator_address="", num_processes=-1,
                    process_id=-1)
    return ml_collections.ConfigDict({**defaults, **fields})


@pytest.mark.parametrize("fields, environ, expected", [
    ({}, {}, False),                                                     # a plain run
    ({"distributed": "off"}, {"SLURM_STEP_NUM_TASKS": "8"}, False),      # off wins
    ({"distributed": "on"}, {}, True),                                   # TPU pods, explicit
    ({"coordinator_address": "10.0.0.1:1234"}, {}, True),
    ({}, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ({}, {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "3"}, True),      # srun, 8 tasks
    ({}, {"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "8"}, False),     # a 1-task step
    ({}, {"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, False),             # the batch script
    ({}, {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911"}, True),
])
def test_cluster_requested(fields, environ, expected):
    assert distributed.cluster_requested(parallel_config(**fields), environ) is expected


def test_cluster_requested_rejects_unknown_modes():
    with pytest.raises(ValueError, match="parallel.distributed"):
        distributed.cluster_requested(parallel_config(distributed="yes"), {})


def test_initialize_arguments():
    assert distributed.initialize_arguments(parallel_config()) == {}
    assert distributed.initialize_arguments(parallel_config(
        coordinator_address="127.0.0.1:5000", num_processes=4, process_id=3)) == {
        "coordinator_address": "127.0.0.1:5000", "num_processes": 4, "process_id": 3}
    with pytest.raises(ValueError, match="set together"):
        distributed.initialize_arguments(parallel_config(num_processes=4))
    with pytest.raises(ValueError, match="process_id=4"):
        distributed.initialize_arguments(parallel_config(num_processes=4, process_id=4))


def test_maybe_initialize_leaves_a_single_process_run_alone():
    config = ml_collections.ConfigDict({"parallel": parallel_config()})
    assert distributed.maybe_initialize(config, environ={}) is False
    assert distributed.is_primary()
    assert distributed.primary_first(lambda: 7) == 7


def two_process_probe(process_id: int, port: int, out_dir: str) -> None:
    """(Run in each of two processes.) Exercises parallel.py's placement and transfer
    primitives over a 2-device mesh spanning both processes; writes what it saw to
    ``out_dir/probe_<process_id>.json``."""
    import types

    import jax
    import numpy as np

    from jax_cavs.core import parallel

    config = ml_collections.ConfigDict({"parallel": parallel_config(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)})
    assert distributed.maybe_initialize(config)
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)  # the global batch
    double = jax.jit(lambda batch: batch["x"] * 2)
    local = parallel.shard_batch({"x": x[2 * process_id:2 * process_id + 2]}, mesh)
    whole = parallel.shard_batch({"x": x}, mesh, whole=True)
    try:
        np.asarray(double(local))
        asarray_fails = False
    except RuntimeError:  # the other process's rows are not addressable here
        asarray_fails = True
    holder = types.SimpleNamespace(params={"w": np.ones((3,), np.float32)}, batch_stats={})
    forward = parallel.jit_forward(lambda p, bs, batch: batch["x"] * p["w"] + 1, mesh, holder)
    committed = jax.device_put(np.full((3,), 5.0, np.float32), jax.local_devices()[0])
    placed = parallel.shard_state({"committed": committed, "host": np.arange(3.0)}, mesh)
    order = os.path.join(out_dir, "order.txt")
    distributed.primary_first(lambda: open(order, "a").write(f"{process_id}\n"))
    result = {
        "per_process": parallel.to_host(double(local)).tolist(),
        "whole": parallel.to_host(double(whole)).tolist(),
        "asarray_fails": asarray_fails,
        "forward": np.asarray(forward(holder.params, holder.batch_stats, {"x": whole["x"]}))
        .tolist(),
        "placed": {k: np.asarray(v).tolist() for k, v in placed.items()},
        "primary": distributed.is_primary(),
    }
    with open(os.path.join(out_dir, f"probe_{process_id}.json"), "w") as f:
        json.dump(result, f)


def test_parallel_primitives_across_two_processes(tmp_path):
    """Two real processes (one CPU device each, gloo collectives): global batches from
    per-process slices and from whole batches, ``to_host`` of process-split results (where
    ``np.asarray`` fails), ``jit_forward``'s replicated outputs, state placement from local
    (committed) arrays, and ``primary_first``'s order."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = []
    for i in range(2):
        with open(tmp_path / f"probe_{i}.log", "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-c", f"import test_multiprocess as t; "
                 f"t.two_process_probe({i}, {port}, {str(tmp_path)!r})"],
                cwd=REPO, env=subprocess_env(1), stdout=log, stderr=subprocess.STDOUT))
    try:
        for i, process in enumerate(processes):
            finish(process, str(tmp_path / f"probe_{i}.log"), timeout=300)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    expected = (np.arange(12, dtype=np.float32).reshape(4, 3) * 2).tolist()
    for i in range(2):
        with open(tmp_path / f"probe_{i}.json") as f:
            seen = json.load(f)
        assert seen["per_process"] == expected and seen["whole"] == expected
        assert seen["asarray_fails"]
        assert seen["forward"] == (np.arange(12.0).reshape(4, 3) + 1).tolist()
        assert seen["placed"] == {"committed": [5.0] * 3, "host": [0.0, 1.0, 2.0]}
        assert seen["primary"] == (i == 0)
    assert (tmp_path / "order.txt").read_text() == "0\n1\n"


def start_two(workdir, data_dir, *flags: str, config: str = RUNLOCAL) -> subprocess.Popen:
    """``launch/local_multiprocess.sh 2``: two processes with one CPU device each (its own
    process group: a timeout stops its children too); output to ``<workdir>.log``."""
    with open(f"{workdir}.log", "w") as log:
        return subprocess.Popen(
            ["bash", "launch/local_multiprocess.sh", "2", config, str(workdir),
             f"--config.dataset.data_dir={data_dir}", *flags],
            cwd=REPO, env={**subprocess_env(1), "PYTHON": sys.executable},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run_both(tmp_path, name: str, data_dir: str, *flags: str, config: str = RUNLOCAL):
    """The single-process and the two-process run of ``config``, concurrently; their
    workdirs."""
    single_dir, two_dir = tmp_path / f"{name}_single", tmp_path / f"{name}_two"
    single = start_main(single_dir, data_dir, 1, *flags, config=config)
    launcher = start_two(two_dir, data_dir, *flags, config=config)
    try:
        finish(launcher, f"{two_dir}.log")
        finish(single, f"{single_dir}.log")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        if single.poll() is None:
            single.kill()
    return single_dir, two_dir


@pytest.fixture(scope="module")
def single_finetune(tmp_path_factory, tiny_data_dir):
    """The single-process fine-tuning run (``RUN_FLAGS``): the reference of the two-process
    run and the trained first task the memory tests reuse (``first_task_from``)."""
    workdir = tmp_path_factory.mktemp("multiprocess") / "finetune_single"
    finish(start_main(workdir, tiny_data_dir, 1, *RUN_FLAGS), f"{workdir}.log")
    return workdir


@pytest.mark.slow
def test_two_local_processes_match_one(tmp_path, tiny_data_dir, single_finetune):
    """Two processes with one CPU device each share the training and evaluation through
    jax.distributed and write one metrics.json, equal to the single-process run's within the
    tolerance of tests/test_parallel.py (the same float32 reduction-order argument: the global
    batches hold the same clips, in another order)."""
    workdir = tmp_path / "finetune_two"
    launcher = start_two(workdir, tiny_data_dir, *RUN_FLAGS)
    try:
        finish(launcher, f"{workdir}.log")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    with open(f"{workdir}.log") as f:
        primary = f.read()
    with open(workdir / "logs" / "process_1.log") as f:
        secondary = f.read()
    assert "jax.distributed: process 0 of 2, 1 of 2 devices" in primary
    assert "jax.distributed: process 1 of 2, 1 of 2 devices" in secondary
    assert "Results in" in primary and "Results in" not in secondary  # process 0 reports
    assert os.listdir(workdir / "checkpoints")
    assert_metrics_close(load_metrics(single_finetune), load_metrics(workdir),
                         atol=METRICS_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("name, config, memory_file", [
    ("herding", "configs/replay.py:runlocal,selection=herding", "replay_0.json"),
    ("mss", "configs/cmr.py:runlocal", "task_0.json")])
def test_two_processes_select_the_single_process_memory(name, config, memory_file, tmp_path,
                                                        tiny_data_dir, single_finetune):
    """The replay memory selected from one model (the first task, trained once and reused by
    both runs: ``first_task_from``) is exactly the single-process run's, for herding and for
    CMR's MSS (f^v = the learner on silent audio): every process selects from the whole task,
    gathered in batch order, and ties within float32 rounding go to the earlier record
    (``core.hostpass``, ``cl.selection``, ``mss.rank``). Memories of later tasks are not
    compared: the learners the two runs train differ in their last bits, which can move a
    pick; so does a CMR twin, which each run trains itself."""
    flags = (*RUN_FLAGS, f"--config.first_task_from={single_finetune}",
             *(["--config.strategy.visual_model=zero_audio"] if name == "mss" else []))
    one, two = run_both(tmp_path, name, tiny_data_dir, *flags, config=config)
    records = []
    for run in (one, two):
        with open(run / "memory" / memory_file) as f:
            records.append(memory_ids(json.load(f)))
    assert records[0] and records[1] == records[0], name


def memory_ids(record: dict) -> dict:
    """The videos a memory record keeps per class (replay: the ids; CMR's MSS: the selected
    ids, without their float scores)."""
    return {c: value if isinstance(value, list) else [v["id"] for v in value["selected"]]
            for c, value in record["classes"].items()}
