"""AV-CIL: audio-visual class-incremental video classification (Pian et al., ICCV 2023) on
pre-extracted features, with the baselines of its Table 1.

Importing the package registers its strategies and the problem-agnostic ones of ``cl``.
"""

import jax_cavs.cl.strategies  # noqa: F401 (registers finetune)
import jax_cavs.problems.av_cil.strategies  # noqa: F401 (registers the strategies)


def build_problem(config):
    """The ``problem.AVCILProblem`` of a run's config."""
    from jax_cavs.problems.av_cil.problem import AVCILProblem

    return AVCILProblem.from_config(config)
