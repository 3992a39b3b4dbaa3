"""Shared fixtures: the tiny SynthAVS dataset, built once per test process, an uninterrupted
fine-tuning ``runlocal`` run that the interrupt tests compare against, and one persistent XLA
compilation cache for every test process and every CLI run the tests start (compiling the
model dominates the suite's time; the cache makes each program compile once), compiled fast:
XLA:CPU's LLVM at optimisation level 0 without its expensive passes (for every test process
and every process the tests start) halves the compile time of a train step (32 -> 16 s for
``configs/lwf.py:runlocal``) on the tiny models the tests run; runs the tests compare with
each other always share the flags. Users' runs keep XLA's defaults."""

import os
import subprocess
import sys

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):  # before jax starts its backend
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.environ.setdefault(
    "JAX_CAVS_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jax_cavs", "xla"))
jax.config.update("jax_compilation_cache_dir", _CACHE)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir holding ``synth_avs/tiny`` (built on first use, ~3 s)."""
    from jax_cavs.data import sources

    data_dir = str(tmp_path_factory.mktemp("data"))
    sources.load_dataset("synth_avs", "tiny", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def avsbench_runlocal_data(tmp_path_factory) -> str:
    """A data dir whose TFDS manual directory holds an AVSBench-semantic tree written from
    SynthAVS tiny (10-frame v1s-style clips, only frame 0 annotated, 3 val clips), for
    ``configs/<method>.py:avsbench,runlocal``."""
    import dataclasses

    from data_pipelines import avsbench_layout, synth_avs

    data_dir = tmp_path_factory.mktemp("avsbench_data")
    tiny = dataclasses.replace(synth_avs.SynthAVS.builder_configs["tiny"], name="x",
                               num_frames=10, short_clip_share=0.5, first_frame_only_share=1.0)
    avsbench_layout.write_synth_avs_semantic(
        str(data_dir / "downloads" / "manual" / "avsbench_semantic"), tiny, val_clips=3)
    return str(data_dir)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finetune_runlocal_command(workdir: str, data_dir: str, *flags: str) -> list[str]:
    """The command line of a fine-tuning ``runlocal`` run on the tiny data."""
    return [sys.executable, "-m", "jax_cavs.main", "--config", "configs/finetune.py:runlocal",
            "--workdir", workdir, f"--config.dataset.data_dir={data_dir}", *flags]


@pytest.fixture(scope="session")
def finetune_runlocal(tmp_path_factory, tiny_data_dir) -> str:
    """The workdir of one uninterrupted ``configs/finetune.py:runlocal`` CLI run (how often
    a run checkpoints or how many grain workers feed it changes none of its results)."""
    workdir = str(tmp_path_factory.mktemp("finetune_runlocal"))
    result = subprocess.run(finetune_runlocal_command(workdir, tiny_data_dir), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
