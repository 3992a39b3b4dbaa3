"""Tests of sharded execution (jax_cavs/parallel.py) on 8 simulated devices, and the helpers
and fixtures that test_parallel_sharding.py, test_parallel_precision.py and test_multiprocess.py
import from here.

The 8-device checks run in subprocesses with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag only acts before JAX
initialises, and other test modules have initialised it already in this process).

Tolerances. A sharded step computes the same function as the single-device step: XLA splits
every reduction over the batch (the loss mean, BatchNorm statistics, the gradient sums) into
per-device partial sums followed by an all-reduce, so only the order of float32 additions
changes. Summing n terms in a different order changes the result by about sqrt(n)·eps relative
in practice (eps = 2^-23 ≈ 1.2e-7, the worst case is n·eps); the largest reductions here have
n = 8 clips x 5 frames x 32 x 32 pixels = 40960 terms, so sqrt(n)·eps ≈ 2.4e-5, hence
rtol = 1e-4 (4x the estimate) on a train step's results.

The sharding rules that need no devices are tested in test_parallel_sharding.py, the model's
accelerator options (mixed precision, rematerialisation) in test_parallel_precision.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from jax_cavs.problems.cavs import config as config_base
from jax_cavs.core import parallel
from jax_cavs.problems.cavs import strategies
from jax_cavs.core import steps as train_lib
from jax_cavs.core.optim import build_optimizer
from jax_cavs.problems.cavs.model import build_model
from jax_cavs.problems.cavs.problem import CAVSProblem
from jax_cavs.core.state import create_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
NUM_CLASSES, T, SIZE, CLIPS = 9, 5, 32, 8
STEP_RTOL = 1e-4
# Final metrics of runs that differ only in float32 reduction order (the runlocal test's doc).
METRICS_ATOL = 5e-3
RUNLOCAL = "configs/finetune.py:runlocal"
# Short end-to-end runs: one epoch per task, global batches of 8 clips (divisible by 8 devices).
RUN_FLAGS = ("--config.train.epochs=1", "--config.train.batch_size=8",
             "--config.train.eval_batch_size=8")


def runlocal_config() -> ml_collections.ConfigDict:
    return config_base.base_config("finetune", config_base.parse_arg("runlocal", runlocal=False))


def model_config(cfg: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    """The model fields of the config plus the class count (``CAVSProblem.from_config``)."""
    return ml_collections.ConfigDict({**cfg.to_dict(), "num_classes": num_classes})


def subprocess_env(devices: int) -> dict[str, str]:
    """This environment (with conftest.py's fast compilation) with ``devices`` CPU devices
    per JAX process, the tests' persistent compilation cache and tests/ importable."""
    flags = os.environ.get("XLA_FLAGS", "")
    if devices > 1:
        flags += f" --xla_force_host_platform_device_count={devices}"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))}
    if jax.config.jax_compilation_cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    return env


def start_main(workdir, data_dir, devices: int, *flags: str, config: str = RUNLOCAL
               ) -> subprocess.Popen:
    """``python -m jax_cavs.main`` on ``config`` with ``devices`` devices; output to
    ``<workdir>.log``."""
    with open(f"{workdir}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "jax_cavs.main", "--config", config, "--workdir",
             str(workdir), f"--config.dataset.data_dir={data_dir}", *flags],
            cwd=REPO, env=subprocess_env(devices), stdout=log, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log_path: str, timeout: float = 900) -> None:
    """Waits for ``process``; fails the test with the end of its log if it failed."""
    code = process.wait(timeout=timeout)
    if code != 0:
        with open(log_path) as f:
            pytest.fail(f"{process.args} exited with {code}:\n{f.read()[-4000:]}")


def load_metrics(workdir) -> dict:
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


def assert_metrics_close(expected: dict, actual: dict, atol: float) -> None:
    """Every per-task mIoU, per-class IoU and accuracy-matrix entry agrees within ``atol``."""
    assert len(actual["tasks"]) == len(expected["tasks"])
    for want, got in zip(expected["tasks"], actual["tasks"]):
        for key in ("old", "new", "all"):
            assert (want["miou"][key] is None) == (got["miou"][key] is None), key
            if want["miou"][key] is not None:
                assert got["miou"][key] == pytest.approx(want["miou"][key], abs=atol), key
        assert [v is None for v in got["per_class_iou"]] == \
            [v is None for v in want["per_class_iou"]]
        np.testing.assert_allclose(
            [v for v in got["per_class_iou"] if v is not None],
            [v for v in want["per_class_iou"] if v is not None], rtol=0, atol=atol)
    def as_float(matrix):  # null (undefined) entries must be null in both, as NaN
        return np.array([[np.nan if v is None else v for v in row] for row in matrix])
    np.testing.assert_allclose(as_float(actual["accuracy_matrix"]),
                               as_float(expected["accuracy_matrix"]), rtol=0, atol=atol)


# -- work done in the 8-device subprocess ------------------------------------------------------

def random_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """CLIPS clips with random frames/audio, labels over classes 0..6, ignore pixels and one
    unannotated frame per clip (so every masking path is exercised)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, (CLIPS, T, SIZE, SIZE)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.05] = 255
    label_mask = np.ones((CLIPS, T), np.float32)
    label_mask[:, 2] = 0
    return {"frames": rng.normal(size=(CLIPS, T, SIZE, SIZE, 3)).astype(np.float32),
            "audio": rng.normal(size=(CLIPS, T, 96, 64)).astype(np.float32),
            "labels": labels, "label_mask": label_mask,
            "frame_mask": np.ones((CLIPS, T), np.float32),
            "index": np.arange(CLIPS, dtype=np.int32), "is_memory": np.zeros(CLIPS, bool),
            "valid": np.ones(CLIPS, np.float32)}


def random_like(shapes, seed: int = 0):
    """numpy N(0, 0.1^2) arrays with the shapes of ``shapes`` (``jax.eval_shape`` of an init:
    no init compilation); BatchNorm variances U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
        return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def initial_state(optimizer: str = "adam", **model_overrides):
    """(problem, host ContinualState) of the runlocal model (fields overridden by
    ``model_overrides``; ``CAVSProblem(model)``) with classes 0..6 of 9 seen and 1..6
    current."""
    cfg = runlocal_config()
    cfg.optimizer.name = optimizer
    model = build_model(ml_collections.ConfigDict(
        {**model_config(cfg.model, NUM_CLASSES).to_dict(), **model_overrides}))
    dummy = (jnp.zeros((1, T, SIZE, SIZE, 3)), jnp.zeros((1, T, 96, 64)), jnp.ones((1, T)))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy, train=False))
    state = create_state(random_like(shapes), build_optimizer(cfg.optimizer), NUM_CLASSES, 0,
                         False, {})
    seen = np.arange(NUM_CLASSES) < 7
    state = state.replace(seen=jnp.asarray(seen), current=jnp.asarray(seen).at[0].set(False))
    return CAVSProblem(model), jax.device_get(state)


STEP_LAYOUTS = {"single": (1, 1), "data": (8, 1), "fsdp": (2, 4)}  # (data, fsdp) devices
STEP_GROUPS = ("update", "momentum", "batch_stats", "metrics")


def sharded_step_results(out_path: str) -> None:
    """One finetune train step for each of ``STEP_LAYOUTS``; saves to ``out_path`` (npz, keys
    ``layout/group/leaf``) the parameter update, the momentum (= the clipped gradient after
    one step), the new BatchNorm statistics and the metrics, and how many params FSDP split.

    SGD (momentum 0.9, Nesterov) makes the update linear in the gradient, so its rounding
    error is the gradient's. (Adam's first step, lr·g/(|g|+1e-8), turns the rounding noise of
    gradients that are exactly 0 in exact arithmetic, e.g. of a bias followed by BatchNorm,
    into steps of up to lr in either direction: a property of Adam, not of sharding.)
    """
    problem, host_state = initial_state("sgd")
    step_fn = train_lib.make_train_step(problem, strategies.get_strategy("finetune",
                                                                         problem=problem))
    batch, rng = random_batch(), jax.random.key(1)
    devices = np.asarray(jax.devices())
    assert devices.size == 8, "run with --xla_force_host_platform_device_count=8"
    arrays = {}
    for name, (data, fsdp) in STEP_LAYOUTS.items():
        mesh = Mesh(devices[:data * fsdp].reshape(data, fsdp), parallel.BATCH_AXES)
        state = parallel.shard_state(host_state, mesh)
        arrays[f"{name}/num_split_params"] = np.asarray(sum(
            s.spec != P() for s in jax.tree_util.tree_leaves(
                parallel.state_sharding(state.params, mesh))))
        step = parallel.jit_train_step(step_fn, mesh, state)
        new_state, metrics = jax.device_get(step(state, parallel.shard_batch(batch, mesh), rng))
        result = {"update": jax.tree_util.tree_map(np.subtract, new_state.params,
                                                   host_state.params),
                  "momentum": new_state.opt_state.inner_state[-1][0].trace,
                  "batch_stats": new_state.batch_stats, "metrics": metrics}
        for path, leaf in jax.tree_util.tree_flatten_with_path(result)[0]:
            arrays[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    np.savez(out_path, **arrays)


# -- fixtures -----------------------------------------------------------------------------------

def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def step_check(tmp_path_factory):
    """Starts the 8-device train-step comparison (``sharded_step_results``) in a subprocess."""
    root = tmp_path_factory.mktemp("steps")
    out = str(root / "steps.npz")
    with open(root / "steps.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", f"import test_parallel; "
             f"test_parallel.sharded_step_results({out!r})"],
            cwd=REPO, env=subprocess_env(8), stdout=log, stderr=subprocess.STDOUT)
    yield {"process": process, "out": out, "log": str(root / "steps.log")}
    stop(process)


@pytest.fixture(scope="module")
def runlocal_runs(tmp_path_factory, tiny_data_dir):
    """Starts the runlocal experiment on 1 and on 8 devices at once (their compilations
    overlap); maps the device count to the workdir."""
    root = tmp_path_factory.mktemp("runlocal")
    runs = {devices: start_main(root / f"run_{devices}", tiny_data_dir, devices, *RUN_FLAGS)
            for devices in (1, 8)}
    workdirs = {}
    try:
        for devices, process in runs.items():
            finish(process, str(root / f"run_{devices}.log"))
            workdirs[devices] = root / f"run_{devices}"
        yield workdirs
    finally:
        stop(*runs.values())


# -- 8 simulated devices ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sharded_train_step_matches_single_device(step_check):
    """One train step on data=8 and on data=2 x fsdp=4 equals the step on one device.

    Each quantity is compared with rtol 1e-4 and an atol of 1e-4 times its largest entry
    (module doc): an entry that is a sum of cancelling terms carries the rounding error of
    its terms' magnitude, which the largest entry of the same quantity bounds.
    """
    finish(step_check["process"], step_check["log"])
    arrays = np.load(step_check["out"])
    assert int(arrays["fsdp/num_split_params"]) > 0  # the fsdp layout really splits params
    assert int(arrays["data/num_split_params"]) == 0
    for group in STEP_GROUPS:
        runs = {name: {k: arrays[k] for k in arrays.files
                       if k.startswith(f"{name}/['{group}']")}
                for name in STEP_LAYOUTS}
        single = {k.split("/", 1)[1]: v for k, v in runs["single"].items()}
        scale = max(float(np.max(np.abs(v))) for v in single.values())
        assert scale > 0, group
        for name in ("data", "fsdp"):
            sharded = {k.split("/", 1)[1]: v for k, v in runs[name].items()}
            chex.assert_trees_all_close(sharded, single, rtol=STEP_RTOL,
                                        atol=STEP_RTOL * scale)


@pytest.mark.slow
def test_runlocal_on_8_devices_matches_one_device(runlocal_runs):
    """The whole runlocal experiment (2 tasks, train + evaluation) on 8 devices.

    Tolerance: the runs differ only in float32 reduction order (module doc), which training
    compounds over its steps. Parameters whose exact gradient is 0 (biases followed by
    BatchNorm) are driven by rounding noise, which Adam normalises into steps of up to lr, so
    such parameters drift apart, yet they cannot change the outputs. The outputs differ by
    compounded rounding, and a test pixel's prediction can flip only where its two best logits
    are that close: a handful of the 16 x 5 x 32 x 32 = 81920 test pixels (in practice none:
    the metrics agree exactly). A class's IoU is a ratio of pixel counts over ~10^3..10^4
    pixels, so 5e-3 absolute (0.5 mIoU points; the tables report 0.1) allows tens of flipped
    pixels per class.
    """
    assert_metrics_close(load_metrics(runlocal_runs[1]), load_metrics(runlocal_runs[8]),
                         atol=METRICS_ATOL)
