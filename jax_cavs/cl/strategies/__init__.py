"""Problem-agnostic continual strategies, one module per method.

Importing this package imports every module in it, which registers each strategy under its
``name`` (``core.strategy.register``).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
