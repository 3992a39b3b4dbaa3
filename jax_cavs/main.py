"""Command line entry point.

  python -m jax_cavs.main --config configs/cmr.py [--workdir DIR] [--config.x.y=value ...]

The config file's ``get_config(arg)`` receives what follows ``:`` in the path
(``configs/cmr.py:runlocal``). The config is locked: overriding a field that does not exist
is an error. Without ``--workdir`` the run writes to ``workdirs/<strategy>``.

Multi-process runs (several hosts, or one process per GPU) start the same command in every
process; ``config.parallel.distributed`` and the cluster environment decide whether
``jax.distributed`` is initialised (``jax_cavs/core/distributed.py``, ``launch/``).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<method>.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, report).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Continue a run in --workdir even though its saved config.json differs.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax and jax log every step at INFO
    import jax

    from jax_cavs import experiment  # heavy imports after flag parsing
    from jax_cavs.core import distributed

    if not jax.config.jax_compilation_cache_dir:  # re-runs and resumes skip XLA compilation
        jax.config.update("jax_compilation_cache_dir", os.environ.get(
            "JAX_CAVS_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jax_cavs",
                                               "xla")))

    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("workdirs", config.strategy.name)
    try:
        distributed.maybe_initialize(config)  # multi-process runs: before any device is used
        experiment.create(config, workdir, _ALLOW_CONFIG_CHANGE.value).run()
    except (ValueError, FileNotFoundError, experiment.NonFiniteLoss) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if distributed.is_primary():
        print(f"\nResults in {os.path.abspath(workdir)}/metrics.json")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
