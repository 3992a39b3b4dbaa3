"""One package per problem (``config.problem``), each implementing ``core.problem.Problem``.

``build(config)`` imports ``jax_cavs.problems.<config.problem>`` (which registers its
strategies and the problem-agnostic ones of ``jax_cavs.cl``) and returns its problem object.
"""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def build(config: ml_collections.ConfigDict):
    """The problem object of ``config`` (``config.problem``, e.g. ``"cavs"``)."""
    name = config.get("problem", "cavs")
    if name not in available():
        raise ValueError(f"config field problem={name!r} is not a known problem; valid: "
                         f"{', '.join(available())}.")
    return importlib.import_module(f"{__name__}.{name}").build_problem(config)
