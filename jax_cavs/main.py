"""Command line entry point.

  python -m jax_cavs.main --config configs/cmr.py [--workdir DIR] [--config.x.y=value ...]

The config file's ``get_config(arg)`` receives what follows ``:`` in the path
(``configs/cmr.py:runlocal``). The config is locked: overriding a field that does not exist
is an error. Without ``--workdir`` the run writes to ``workdirs/<strategy>``.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<method>.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, report).")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax and jax log every step at INFO
    from jax_cavs import experiment  # heavy imports after flag parsing: --help stays fast

    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("workdirs", config.strategy.name)
    try:
        experiment.Experiment.create(config, workdir).run()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"\nResults in {os.path.abspath(workdir)}/metrics.json")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
