"""The one atomic JSON writer of the run's files (``metrics.json``, ``config.json``,
``timings.json``, the memory records): a reader never sees a half-written file, and a kill
mid-write leaves the previous version in place."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_json_atomic(path: str, value: Any) -> None:
    """Writes ``value`` to ``path`` (directories created) through a temporary file in the
    same directory and ``os.replace``."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False,
                                     encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.chmod(f.name, 0o644)  # NamedTemporaryFile creates 0600
    os.replace(f.name, path)


def update_json_atomic(path: str, key: str, value: Any) -> None:
    """Sets ``key`` of the JSON object in ``path`` (created when missing) to ``value``."""
    document = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    document[key] = value
    write_json_atomic(path, document)
