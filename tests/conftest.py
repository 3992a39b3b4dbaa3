"""Shared fixtures: the tiny SynthAVS dataset, built once per test process."""

import pytest


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir holding ``synth_avs/tiny`` (built on first use, ~3 s)."""
    from jax_cavs.data import sources

    data_dir = str(tmp_path_factory.mktemp("data"))
    sources.load_dataset("synth_avs", "tiny", data_dir)
    return data_dir
