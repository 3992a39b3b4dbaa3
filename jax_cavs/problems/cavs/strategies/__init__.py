"""CAVS strategies (and, through ``jax_cavs.cl.strategies``, the problem-agnostic ones).

Importing this package imports every module in it, which registers each strategy under its
``name`` (``base.register``); ``get_strategy(name, hparams)`` then builds one from a config.
"""

import importlib
import pkgutil

import jax_cavs.cl.strategies  # noqa: F401  (registers the problem-agnostic methods)

from jax_cavs.core.strategy import (  # noqa: F401
    Strategy, available, get_strategy, strategy_class)  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
