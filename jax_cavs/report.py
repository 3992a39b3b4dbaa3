"""Re-renders a run's report: ``python -m jax_cavs.report WORKDIR``.

The workdir's ``metrics.json`` names its problem; that problem's report panels
(``problems/<name>/report.py``) are drawn beside the generic ones (``core.report``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Sequence


def write_report(workdir: str) -> str:
    """Renders ``WORKDIR/report/`` with its problem's panels; returns ``index.html``'s path."""
    path = os.path.join(workdir, "metrics.json")
    problem = "cavs"
    if os.path.exists(path):
        with open(path) as f:
            problem = json.load(f).get("problem", "cavs")
    return importlib.import_module(f"jax_cavs.problems.{problem}.report").write_report(workdir)


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m jax_cavs.report WORKDIR")
    try:
        print(write_report(argv[1]))
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main(sys.argv)
