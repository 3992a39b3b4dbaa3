"""Config variant arguments: the single ``arg`` string of ``--config FILE.py:arg``.

Configs follow big_vision: ``get_config(arg)`` gets what follows ``:`` in the path
(``configs/cmr.py:runlocal,memory=3``) and parses it here against its defaults.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections


def parse_arg(arg: str | None, common: Mapping[str, Any] = (), **spec: Any
              ) -> ml_collections.ConfigDict:
    """Parses ``"a,b=3,c=x"`` against defaults ``spec`` plus ``common`` (the arguments every
    config of a problem accepts); types follow the defaults.

    A bare name sets a boolean to True. Unknown names are an error listing the valid ones.
    """
    spec = {**dict(common), **spec}
    result = ml_collections.ConfigDict(dict(spec))
    for token in filter(None, (arg or "").split(",")):
        key, _, value = token.partition("=")
        key = key.strip()
        if key not in spec:
            raise ValueError(f"unknown config argument {key!r}; valid arguments: "
                             f"{', '.join(sorted(spec))}.")
        default = spec[key]
        if not value:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...).")
            result[key] = True
        elif isinstance(default, bool):
            result[key] = value.lower() in ("1", "true", "yes")
        else:
            result[key] = type(default)(value)
    return result
