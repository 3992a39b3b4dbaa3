"""Shared fixtures: the tiny SynthAVS dataset, built once per test process, and one persistent
XLA compilation cache for every test process and every CLI run the tests start (compiling the
model dominates the suite's time; the cache makes each program compile once)."""

import os

import jax
import pytest

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
