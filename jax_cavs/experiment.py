"""A continual experiment from a config: the config's problem, then the core's loop.

``create(config, workdir)`` builds ``jax_cavs.problems.build(config)`` and hands it to
``core.loop.Experiment.create``; ``run()`` executes (or resumes) the task loop. The experiment
holds open files (orbax's checkpoint manager, TensorBoard's writer): use it as a context
(``with create(config, workdir) as experiment: experiment.run()``) or ``close()`` it.
"""

from __future__ import annotations

import ml_collections

from jax_cavs import problems
from jax_cavs.core.guards import ConfigMismatch, NonFiniteLoss  # noqa: F401 (re-exported)
from jax_cavs.core.loop import Experiment


def create(config: ml_collections.ConfigDict, workdir: str,
           allow_config_change: bool = False) -> Experiment:
    """The experiment of ``config`` in ``workdir`` (see ``core.loop.Experiment``)."""
    return Experiment.create(config, workdir, problems.build(config), allow_config_change)
