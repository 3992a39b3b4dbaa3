"""Continual strategies, one module per method.

Importing this package imports every module in it, which registers each strategy under its
``name`` (``base.register``); ``get_strategy(name, hparams)`` then builds one from a config.
"""

import importlib
import pkgutil

from jax_cavs.strategies.base import (  # noqa: F401
    Strategy, available, get_strategy, strategy_class)  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
