"""AV-CIL's panels of the run report (``core.report``): per-class test accuracy after the
last task, and the paper's summary (mean accuracy, eq 15; average forgetting, eq 16)."""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from jax_cavs.core import report


class AVCILPanels:
    def __init__(self, class_names: Sequence[str] = ()):
        self.class_names = list(class_names)

    def name(self, c: int) -> str:
        return self.class_names[c] if c < len(self.class_names) else str(c)

    def figures(self, metrics: Mapping[str, Any]) -> list[tuple[str, str, Figure]]:
        last = metrics["tasks"][-1]
        return [("task_accuracy.png", "Test accuracy of every task's classes after the "
                 "last task", _task_bars(last["task_acc"]))]

    def sections(self, metrics: Mapping[str, Any]) -> list[str]:
        summary = metrics.get("summary", {})
        rows = [[label, report.cell(summary.get(key))] for key, label in
                (("mean_accuracy", "mean accuracy (eq 15)"),
                 ("average_forgetting", "average forgetting (eq 16)"))]
        return [f"<h2>{html.escape('AV-CIL summary (%)')}</h2>"
                + report.table(["metric", "value"], rows)]

    def persist(self, directory: str) -> None:
        """Nothing beyond metrics.json is needed to re-render."""


def _task_bars(task_acc: Sequence[float | None]) -> Figure:
    fig, axes = report.figure(max(3.0, 0.5 * len(task_acc) + 1.5), 2.5)
    ax = axes[0, 0]
    values = [report.percent_or_nan(v) for v in task_acc]
    ax.bar(range(1, len(values) + 1), values,
           color=[report.group_colour(j) for j in range(len(values))])
    ax.set_xlabel("task")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xticks(range(1, len(values) + 1))
    return fig
