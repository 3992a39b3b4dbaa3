"""XLA compiler options per backend, applied to every jit of the project (``xla.jit``).

On CPU, XLA (jaxlib 0.10) hands most convolutions to YNNPACK. Its weight-gradient
convolutions (windows as large as the feature map) run ~3x slower than XLA's Eigen path and
cost seconds of page faults per step; with ``xla_cpu_experimental_ynn_fusion_type =
LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`` YNNPACK keeps only single dots and the convolutions go
to Eigen: the paper-size AVSBench train step fell from 46 s to 24-27 s on our 2-core CPU
(``benchmarks/train_step.py``, README "Benchmarks"); the math is unchanged (float32 either
way, other rounding).

Override with the environment variable ``JAX_CAVS_XLA_OPTIONS``: a JSON object merged over
the defaults of the running backend; ``null`` removes a default, e.g.
``JAX_CAVS_XLA_OPTIONS='{"xla_cpu_experimental_ynn_fusion_type": null}'`` restores XLA's own
choice. Options are resolved when a function is first called (the backend is known then),
so module-level ``@xla.jit`` does not start a backend at import.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import jax

ENV = "JAX_CAVS_XLA_OPTIONS"
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
}


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The options every jit compiles with on ``backend`` (default: jax's default backend)."""
    backend = backend or jax.default_backend()
    options = dict(DEFAULTS.get(backend, {}))
    text = os.environ.get(ENV, "").strip()
    if text:
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"environment variable {ENV}={text!r} is not JSON ({error}); "
                             f"give an object such as '{{\"option\": value}}'.") from None
        if not isinstance(overrides, dict):
            raise ValueError(f"environment variable {ENV} must be a JSON object, got {text!r}.")
        options.update(overrides)
    return {key: value for key, value in options.items() if value is not None}


class _Jit:
    """``jax.jit(fun, **kwargs)`` with ``compiler_options``, built on first use."""

    def __init__(self, fun: Callable, kwargs: dict):
        self._fun, self._kwargs = fun, kwargs
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def jitted(self):
        return jax.jit(self._fun, compiler_options=compiler_options(), **self._kwargs)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def jit(fun: Callable | None = None, **kwargs):
    """``jax.jit`` with the project's compiler options; also a decorator (``@jit`` or
    ``@jit(static_argnames=...)``)."""
    if fun is None:
        return lambda f: _Jit(f, kwargs)
    return _Jit(fun, kwargs)
