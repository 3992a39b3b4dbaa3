"""CAVS: continual semantic audio-visual segmentation (CMR and its baselines).

Importing the package registers its strategies (``strategies``) and the problem-agnostic ones.
"""

from jax_cavs.problems.cavs import strategies  # noqa: F401 (registers the strategies)


def build_problem(config):
    """The ``problem.CAVSProblem`` of a run's config."""
    from jax_cavs.problems.cavs.problem import CAVSProblem

    return CAVSProblem.from_config(config)
