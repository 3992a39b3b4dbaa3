"""A run's report, the part every problem shares: ``DIR/report/index.html`` and its PNGs.

Written by the loop at the end of every task (and re-rendered for an existing run with
``python -m jax_cavs.report DIR``). The generic panels are the accuracy matrix, the problem's
headline scores per task (``metrics.json``'s ``headline`` entry of every task, e.g. CAVS's
old / new / all mIoU), the continual-learning summary, the seconds each task spent training,
at its end and evaluating (``timings.json``) and the config; a problem adds its own panels
(``Panels``; CAVS: ``problems/cavs/report.py``). Tasks are numbered from 1, as a person counts
them (``metrics.json`` keeps the 0-based index).

Inputs read from the workdir: ``metrics.json`` (required, ``core.loop.Experiment.metrics``):
``method``, ``headline``, ``scenario`` {split, mode, subset, class_order, groups}, ``tasks``
[{task, classes, <headline>: {name: score or null}, ...}], ``accuracy_matrix``
[tasks][groups] (null = undefined), optional ``summary`` (floats are fractions, shown as %;
integers are counts, shown as they are); ``config.json`` and ``timings.json`` (optional,
``{"<t>": {"train": s, "end_task": s, "eval": s, "total": s}}``, ``core.outputs``).

Figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state, no display),
at ``DPI`` with explicit sizes in inches, saved without tight bounding boxes, so every PNG has
a known pixel size. ``ScalarWriter`` logs TensorBoard scalars to ``DIR/tensorboard``.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from typing import Any, Callable, Mapping, Protocol, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
         "axes.spines.right": False}
GROUP_COLOURS = matplotlib.colormaps["tab10"].colors


class Panels(Protocol):
    """A problem's part of the report.

    ``name(c)`` names class ``c``; ``figures`` returns (file name, caption, figure) triples
    placed after the generic ones; ``sections`` html fragments placed after the figures;
    ``persist(directory)`` saves the inputs a later re-render needs into the new report
    directory.
    """

    def name(self, c: int) -> str: ...

    def figures(self, metrics: Mapping[str, Any]) -> list[tuple[str, str, Figure]]: ...

    def sections(self, metrics: Mapping[str, Any]) -> list[str]: ...

    def persist(self, directory: str) -> None: ...


# -- inputs ------------------------------------------------------------------------------

def read_json(path: str) -> Any:
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); re-run the task that "
                             "wrote it or delete it.") from error


def load_metrics(workdir: str) -> dict[str, Any]:
    """``DIR/metrics.json``, checked for the fields the report needs."""
    path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: a report needs a workdir in which at "
                                "least one task has finished.")
    metrics = read_json(path)
    for field in ("method", "headline", "scenario", "tasks", "accuracy_matrix"):
        if field not in metrics:
            raise ValueError(f"{path} has no field {field!r}; it was not written by "
                             "jax_cavs (core.loop).")
    if not metrics["tasks"]:
        raise ValueError(f"{path} lists no finished task; nothing to report yet.")
    return metrics


# -- figures -----------------------------------------------------------------------------

def figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **grid_kw):
    """A Figure of exactly ``width`` x ``height`` inches at ``DPI`` and its 2-D axes grid."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **grid_kw)


def legend_outside(ax, **kwargs) -> None:
    """Legend right of the axes, so it never hides data (constrained layout makes room)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def bar_width(num_bars: int) -> float:
    """Inches for a bar chart with one (rotated) class label per bar."""
    return max(7.0, 1.5 + 0.22 * num_bars)


def group_colour(j: int) -> tuple[float, float, float]:
    return GROUP_COLOURS[j % len(GROUP_COLOURS)]


def percent_or_nan(value: float | None) -> float:
    return np.nan if value is None else 100.0 * value


def plot_accuracy_matrix(metrics: Mapping[str, Any]) -> Figure:
    """Heatmap of mIoU (%) of class group j (columns) after task i (rows), annotated.

    Undefined entries (``null``: group j not yet seen after task i) are blank cells marked "–".
    """
    matrix = np.array([[percent_or_nan(v) for v in row] for row in metrics["accuracy_matrix"]],
                      np.float64)
    fig, axes = figure(6.0, 5.0)
    ax = axes[0, 0]
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=100.0)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, "–" if np.isnan(value) else f"{value:.1f}", ha="center", va="center",
                color="black" if value > 60 or np.isnan(value) else "white")
    ax.set_xticks(range(matrix.shape[1]), [str(j + 1) for j in range(matrix.shape[1])])
    ax.set_yticks(range(matrix.shape[0]), [str(i + 1) for i in range(matrix.shape[0])])
    ax.set_xlabel("classes of task j")
    ax.set_ylabel("after task i")
    ax.set_title("Accuracy matrix (mIoU %)")
    fig.colorbar(image, ax=ax, label="mIoU (%)", shrink=0.8)
    return fig


def plot_headline_per_task(metrics: Mapping[str, Any]) -> Figure:
    """The headline scores (%) after every task (CAVS: old / new / all mIoU); undefined
    values (e.g. no old classes yet) are gaps."""
    headline = metrics["headline"]
    tasks = [row["task"] + 1 for row in metrics["tasks"]]
    fig, axes = figure(7.0, 4.0)
    ax = axes[0, 0]
    for key, marker in zip(metrics["tasks"][0][headline], "osD^v<>"):
        ax.plot(tasks, [percent_or_nan(row[headline][key]) for row in metrics["tasks"]],
                marker=marker, label=key)
    ax.set_xticks(tasks)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("after task")
    ax.set_ylabel(f"{headline} (%)")
    ax.set_title(f"{headline} per task")
    ax.grid(axis="y", alpha=0.3)
    legend_outside(ax)
    return fig


# -- html --------------------------------------------------------------------------------

def cell(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}"


def summary_cell(value: float | int | None) -> str:
    """A summary entry: a count (int) as it is, a fraction as a percentage."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return cell(value)


def summary_header(key: str, value: float | int | None) -> str:
    return key if isinstance(value, int) and not isinstance(value, bool) else f"{key} (%)"


# timings.json's parts of a task (core.progress.Timings) and their column headers.
TIMING_COLUMNS = (("train", "train (s)"), ("end_task", "end of task (s)"), ("eval", "eval (s)"),
                  ("total", "total (s)"))


def timing_cells(record: Any) -> list[str]:
    """A task's seconds per part; "-" where unknown (a missing task, or a timings.json from
    before the split, whose one number timed only the end of the task)."""
    record = record if isinstance(record, Mapping) else {}
    return [str(record[k]) if k in record else "-" for k, _ in TIMING_COLUMNS]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 10px;text-align:right}
td:nth-child(2){text-align:left} th{background:#f0f0f0} img{max-width:100%;display:block}
pre{background:#f6f6f6;padding:1em;overflow:auto}"""


def render_html(metrics: Mapping[str, Any], images: Sequence[tuple[str, str]],
                name: Callable[[int], str], sections: Sequence[str],
                config_text: str | None, timings: Mapping[str, Any] | None = None) -> str:
    """The self-contained page: headline table (with the seconds each task spent training,
    at its end and evaluating, from ``timings.json``, when known), CL summary, the
    ``images`` ((file name, caption) pairs, linked relatively), the problem's ``sections``,
    config."""
    timings = timings or {}
    sc = metrics["scenario"]
    headline = metrics["headline"]
    keys = list(metrics["tasks"][0][headline])
    title = f"{metrics['method']} — {sc['split']} {sc['mode']} ({sc['subset']})"
    parts = [f"<h1>{html.escape(title)}</h1>", f"<h2>{html.escape(headline)} (%) after each "
             "task</h2>",
             table(("task", "classes", *keys, *(header for _, header in TIMING_COLUMNS)),
                   [(row["task"] + 1, ", ".join(name(c) for c in row["classes"]),
                     *(cell(row[headline][k]) for k in keys),
                     *timing_cells(timings.get(str(row["task"]))))
                    for row in metrics["tasks"]])]
    summary = metrics.get("summary", {})
    if summary:
        parts += ["<h2>Continual-learning summary</h2>",
                  table([summary_header(k, v) for k, v in summary.items()],
                        [[summary_cell(v) for v in summary.values()]])]
    for filename, caption in images:
        parts += [f"<h2>{html.escape(caption)}</h2>",
                  f'<img src="{filename}" alt="{html.escape(caption)}">']
    parts += list(sections)
    if config_text is not None:
        parts += ["<h2>Config</h2>", f"<pre>{html.escape(config_text, quote=False)}</pre>"]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


# -- the report --------------------------------------------------------------------------

def _replace_directory(staging: str, final: str) -> None:
    """Moves the finished ``staging`` directory to ``final``, dropping the old one."""
    previous = final + ".old"
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.isdir(final):
        os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)


def _optional_text(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def write_report(workdir: str, panels: Panels) -> str:
    """Renders ``DIR/report/`` from the workdir's files and ``panels``; returns the path of
    its ``index.html``. The directory is built beside the old one and swapped in, so a report
    is never half written."""
    metrics = load_metrics(workdir)
    with matplotlib.rc_context(STYLE):
        figures = [("accuracy_matrix.png", "Accuracy matrix", plot_accuracy_matrix(metrics)),
                   (f"{metrics['headline']}_per_task.png",
                    f"{metrics['headline']} per task", plot_headline_per_task(metrics)),
                   *panels.figures(metrics)]
    timings_text = _optional_text(os.path.join(workdir, "timings.json"))
    final = os.path.join(workdir, "report")
    staging = final + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for filename, _, fig in figures:
        fig.savefig(os.path.join(staging, filename), dpi=DPI)
    panels.persist(staging)
    images = [(filename, caption) for filename, caption, _ in figures]
    with open(os.path.join(staging, "index.html"), "w", encoding="utf-8") as f:
        f.write(render_html(metrics, images, panels.name, panels.sections(metrics),
                            _optional_text(os.path.join(workdir, "config.json")),
                            json.loads(timings_text) if timings_text else None))
    _replace_directory(staging, final)
    return os.path.join(final, "index.html")


def _fmt(value) -> str:
    return "  -  " if value is None else f"{100 * value:5.1f}"


def print_summary(metrics: dict[str, Any], headline: str) -> None:
    """The end-of-run table: the problem's headline scores (%) after every task (numbered
    from 1), then the continual-learning summary (fractions as %, counts as they are)."""
    sc = metrics["scenario"]
    print(f"\n{metrics['method']} on {sc['split']} {sc['mode']} ({sc['subset']}), "
          f"{headline} (%)")
    columns = list(metrics["tasks"][0][headline]) if metrics["tasks"] else []
    print(" | ".join([f"{'task':>4}"] + [f"{c:>5}" for c in columns]))
    for row in metrics["tasks"]:
        print(" | ".join([f"{row['task'] + 1:>4}"] + [_fmt(row[headline][c]) for c in columns]))
    for key, value in metrics.get("summary", {}).items():
        print(f"{summary_header(key, value)}: {summary_cell(value)}")


class ScalarWriter:
    """TensorBoard scalars in ``DIR/tensorboard`` (tensorboardX): losses per term, learning
    rate, mIoU. ``scalars(step, {"train/ce": 0.7, "lr": 1e-4})``; ``None`` values are skipped
    (e.g. old-class mIoU after the first task)."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter  # seconds to import; only the loop needs it

        self.logdir = os.path.join(workdir, "tensorboard")
        self._writer = SummaryWriter(logdir=self.logdir)

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), int(step))

    def close(self) -> None:
        self._writer.close()
