"""AV-CIL's continual methods, one module per method; importing the package registers them.

``separated`` is the shared SS-IL machinery (separated softmax, task-wise distillation, the
class-balanced exemplar memory) that SS-IL, LwF as AV-CIL's authors run it, and AV-CIL itself
build on; iCaRL and AFC have their own files; fine-tuning is ``cl``'s.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
