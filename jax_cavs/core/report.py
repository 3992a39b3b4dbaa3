"""A run's report: PNG plots and a self-contained ``index.html`` under ``DIR/report/``.

Written by the experiment loop at the end of every task, and re-rendered for an existing run
with ``python -m jax_cavs.report DIR``. Inputs read from the workdir:

* ``metrics.json`` (required, written by ``experiment.Experiment.write_metrics``): ``method``,
  ``scenario`` {split, mode, subset, class_order, groups}, ``tasks`` [{task, classes,
  miou {old, new, all}, per_class_iou [K] (None = class absent from the test ground truth),
  }], ``accuracy_matrix`` [tasks][groups] (None = undefined: group not yet seen), optional
  ``summary`` (CL metrics, keys present only where defined).
* ``config.json`` (optional): shown verbatim.
* ``memory/task_<t>.json`` (optional, CMR's MSS, spec_cavs §6.2)::

      {"task": t, "classes": {"<c>": {
          "selected": [{"id": 12, "av": 0.61, "v": 0.55, "deviation": 0.06}, ...],
          "scored":   [... the same records for every video scored for c (optional) ...]}}}

* ``memory/collisions_<t>.json`` (optional, CMR's CSR, spec_cavs §6.3)::

      {"task": t, "classes": {"<old c>": {"collisions": 120, "frequency": 2.0,
                                           "probability": 0.31}},
       "top_pairs": [{"old": 3, "new": 7, "pixels": 1042}, ...]}

Inputs passed by the caller (both persisted under ``report/`` so a re-render keeps them):

* ``class_names``: list of K names indexed by class id (0 = background).
* ``overlays``: list of qualitative examples, each a dict ``{"frame": uint8 [H, W, 3],
  "label": int [H, W], "pred": int [H, W], "title": str}`` (label/pred in 0..K-1, 255 =
  ignore). Typically a few old-class and a few new-class test frames, the title saying which.

Files of a report (optional ones only when their input exists): ``index.html``,
``accuracy_matrix.png``, ``miou_per_task.png``, ``per_class_iou.png``, ``overlays.png``,
``collisions_<t>.png``, ``mss_scores_<t>.png``, and the persisted inputs
``class_names.json`` and ``overlays.npz``.

Figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state, no display),
at ``DPI`` with explicit sizes in inches, saved without tight bounding boxes, so every PNG has
a known pixel size. ``ScalarWriter`` logs TensorBoard scalars to ``DIR/tensorboard``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

DPI = 100
OVERLAY_ALPHA = 0.5
_STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
          "axes.spines.right": False}
_GROUP_COLOURS = matplotlib.colormaps["tab10"].colors
_MIOU_KEYS = ("old", "new", "all")


def voc_palette(num_colours: int = 256) -> np.ndarray:
    """uint8 [num_colours, 3]: the PASCAL-VOC bit-interleaving colour map (spec_cavs §2.3,
    AVSBench ``get_v2_pallete``); entry 0 is black, 255 is VOC's ignore colour (224,224,192)."""
    palette = np.zeros((num_colours, 3), np.uint8)
    for j in range(num_colours):
        lab, bit = j, 7
        while lab > 0:
            for channel in range(3):
                palette[j, channel] |= ((lab >> channel) & 1) << bit
            lab >>= 3
            bit -= 1
    return palette


PALETTE = voc_palette()


def blend_mask(frame: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 [H, W, 3]: ``frame`` with every non-background pixel of ``mask`` [H, W] (class
    ids, 255 = ignore) alpha-blended with its palette colour; background stays untouched."""
    colours = PALETTE[mask].astype(np.float32)
    blended = (1.0 - alpha) * frame.astype(np.float32) + alpha * colours
    return np.where((mask != 0)[..., None], np.rint(blended), frame).astype(np.uint8)


# -- inputs ------------------------------------------------------------------------------

def _read_json(path: str) -> Any:
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
    metrics = _read_json(path)
    for field in ("method", "scenario", "tasks", "accuracy_matrix"):
        if field not in metrics:
            raise ValueError(f"{path} has no field {field!r}; it was not written by "
                             "jax_cavs.experiment.")
    if not metrics["tasks"]:
        raise ValueError(f"{path} lists no finished task; nothing to report yet.")
    return metrics


def _memory_records(workdir: str, prefix: str) -> dict[int, dict[str, Any]]:
    """{task: record} of ``DIR/memory/<prefix>_<t>.json``, sorted by task."""
    directory = os.path.join(workdir, "memory")
    if not os.path.isdir(directory):
        return {}
    found = {}
    for name in os.listdir(directory):
        match = re.fullmatch(rf"{prefix}_(\d+)\.json", name)
        if match:
            found[int(match.group(1))] = _read_json(os.path.join(directory, name))
    return dict(sorted(found.items()))


def _check_overlays(overlays: Sequence[Mapping[str, Any]]) -> None:
    for i, example in enumerate(overlays):
        missing = {"frame", "label", "pred", "title"} - set(example)
        if missing:
            raise ValueError(f"overlays[{i}] lacks {sorted(missing)}; each example needs "
                             "frame, label, pred and title.")
        frame, label, pred = (np.asarray(example[k]) for k in ("frame", "label", "pred"))
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"overlays[{i}].frame must be uint8 [H, W, 3], got "
                             f"{frame.dtype} {frame.shape}; de-normalise the frame first.")
        for field, mask in (("label", label), ("pred", pred)):
            if not np.issubdtype(mask.dtype, np.integer):
                raise ValueError(f"overlays[{i}].{field} must hold integer class ids, got "
                                 f"{mask.dtype}; pass the argmax, not the logits.")
            if mask.shape != frame.shape[:2]:
                raise ValueError(f"overlays[{i}].{field} has shape {mask.shape}, the frame "
                                 f"{frame.shape[:2]}; pass masks at the frame's size.")
            if mask.size and (mask.min() < 0 or mask.max() > 255):
                raise ValueError(f"overlays[{i}].{field} holds ids outside 0..255.")


def _save_overlays(path: str, overlays: Sequence[Mapping[str, Any]]) -> None:
    arrays = {"titles": np.array([str(o["title"]) for o in overlays])}
    for i, example in enumerate(overlays):
        arrays[f"frame_{i}"] = np.asarray(example["frame"], np.uint8)
        arrays[f"label_{i}"] = np.asarray(example["label"], np.uint8)
        arrays[f"pred_{i}"] = np.asarray(example["pred"], np.uint8)
    np.savez_compressed(path, **arrays)


def _load_overlays(path: str) -> list[dict[str, Any]]:
    with np.load(path) as data:
        return [{"frame": data[f"frame_{i}"], "label": data[f"label_{i}"],
                 "pred": data[f"pred_{i}"], "title": str(title)}
                for i, title in enumerate(data["titles"])]


def _namer(class_names: Sequence[str] | None, num_classes: int) -> Callable[[int], str]:
    if class_names is None:
        return lambda c: "background" if c == 0 else str(c)
    if len(class_names) < num_classes:
        raise ValueError(f"class_names has {len(class_names)} entries but metrics.json "
                         f"reports {num_classes} classes; pass one name per class id.")
    return lambda c: str(class_names[c])


# -- figures -----------------------------------------------------------------------------

def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **grid_kw):
    """A Figure of exactly ``width`` x ``height`` inches at ``DPI`` and its 2-D axes grid."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **grid_kw)


def _legend_outside(ax, **kwargs) -> None:
    """Legend right of the axes, so it never hides data (constrained layout makes room)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def _bar_width(num_bars: int) -> float:
    """Inches for a bar chart with one (rotated) class label per bar."""
    return max(7.0, 1.5 + 0.22 * num_bars)


def _group_colour(j: int) -> tuple[float, float, float]:
    return _GROUP_COLOURS[j % len(_GROUP_COLOURS)]


def _percent_or_nan(value: float | None) -> float:
    return np.nan if value is None else 100.0 * value


def plot_accuracy_matrix(metrics: Mapping[str, Any]) -> Figure:
    """Heatmap of mIoU (%) of class group j (columns) after task i (rows), annotated.

    Undefined entries (``null``: group j not yet seen after task i) are blank cells marked "–".
    """
    matrix = np.array([[_percent_or_nan(v) for v in row] for row in metrics["accuracy_matrix"]],
                      np.float64)
    fig, axes = _figure(6.0, 5.0)
    ax = axes[0, 0]
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=100.0)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, "–" if np.isnan(value) else f"{value:.1f}", ha="center", va="center",
                color="black" if value > 60 or np.isnan(value) else "white")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    ax.set_xlabel("classes of task j")
    ax.set_ylabel("after task i")
    ax.set_title("Accuracy matrix (mIoU %)")
    fig.colorbar(image, ax=ax, label="mIoU (%)", shrink=0.8)
    return fig


def plot_miou_per_task(metrics: Mapping[str, Any]) -> Figure:
    """Old / new / all mIoU (%) after every task; missing values (no old classes) are gaps."""
    tasks = [row["task"] for row in metrics["tasks"]]
    fig, axes = _figure(7.0, 4.0)
    ax = axes[0, 0]
    for key, marker in zip(_MIOU_KEYS, "osD"):
        ax.plot(tasks, [_percent_or_nan(row["miou"][key]) for row in metrics["tasks"]],
                marker=marker, label=key)
    ax.set_xticks(tasks)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("after task")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Old / new / all mIoU per task")
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax)
    return fig


def plot_per_class_iou(metrics: Mapping[str, Any], name: Callable[[int], str]) -> Figure:
    """IoU (%) of every class scored after the last task, ordered and coloured by the task
    group that introduced it (background belongs to group 0)."""
    last = metrics["tasks"][-1]
    groups = metrics["scenario"]["groups"]
    ordered = [(0, 0)] + [(j, c) for j, group in enumerate(groups) for c in group]
    bars = [(j, c, last["per_class_iou"][c]) for j, c in ordered
            if c < len(last["per_class_iou"]) and last["per_class_iou"][c] is not None]
    fig, axes = _figure(_bar_width(len(bars)), 4.5)
    ax = axes[0, 0]
    ax.bar(range(len(bars)), [100.0 * iou for _, _, iou in bars],
           color=[_group_colour(j) for j, _, _ in bars])
    ax.set_xticks(range(len(bars)), [name(c) for _, c, _ in bars], rotation=90)
    ax.set_xlim(-0.6, len(bars) - 0.4)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"Per-class IoU after task {last['task']}")
    present = sorted({j for j, _, _ in bars})
    _legend_outside(ax, handles=[Patch(color=_group_colour(j), label=f"task {j}")
                                 for j in present])
    return fig


def plot_overlays(overlays: Sequence[Mapping[str, Any]], name: Callable[[int], str]) -> Figure:
    """One row per example: the frame, ground truth and prediction blended over it, each
    mask panel titled with the classes it shows."""
    fig, axes = _figure(7.5, 2.6 * len(overlays), nrows=len(overlays), ncols=3)
    for row, example in zip(axes, overlays):
        frame = np.asarray(example["frame"])
        row[0].imshow(frame)
        row[0].set_title(str(example["title"]), loc="left")
        for ax, key, caption in ((row[1], "label", "GT"), (row[2], "pred", "pred")):
            mask = np.asarray(example[key])
            ax.imshow(blend_mask(frame, mask))
            shown = [name(int(c)) for c in np.unique(mask) if c not in (0, 255)]
            ax.set_title(f"{caption}: {', '.join(shown) or 'background'}", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    return fig


def plot_collisions(task: int, record: Mapping[str, Any], name: Callable[[int], str]) -> Figure:
    """CSR at one task (spec_cavs §6.3): significant-collision frequency f_c (eq 8) and replay
    probability p_c (eq 9) of every old class."""
    classes = sorted(record["classes"], key=int)
    stats = [record["classes"][c] for c in classes]
    fig, axes = _figure(_bar_width(len(classes)), 5.0, nrows=2, sharex=True)
    for ax, key, label in ((axes[0, 0], "frequency", "significant collisions f_c"),
                           (axes[1, 0], "probability", "replay probability p_c")):
        ax.bar(range(len(classes)), [s[key] for s in stats], color=_GROUP_COLOURS[0])
        ax.set_ylabel(label)
    axes[1, 0].set_xticks(range(len(classes)), [name(int(c)) for c in classes], rotation=90)
    axes[0, 0].set_title(f"Collision-based rehearsal at task {task}")
    return fig


def _deviations(record: Mapping[str, Any], key: str) -> np.ndarray:
    return np.asarray([s["deviation"] for entry in record["classes"].values()
                       for s in entry.get(key, [])], np.float64)


def plot_mss_scores(task: int, record: Mapping[str, Any]) -> Figure:
    """MSS at one task (spec_cavs §6.2): histogram of the audio contribution deviation
    Δ = s_av − s_v (eq 5) of the selected videos, over that of all scored videos if saved."""
    selected, scored = _deviations(record, "selected"), _deviations(record, "scored")
    edges = np.histogram_bin_edges(np.concatenate([selected, scored]), bins=20)
    fig, axes = _figure(6.0, 4.0)
    ax = axes[0, 0]
    if scored.size:
        ax.hist(scored, bins=edges, color="0.7", label=f"all scored (n={scored.size})")
    ax.hist(selected, bins=edges, color=_GROUP_COLOURS[1], alpha=0.85,
            label=f"selected (n={selected.size})")
    ax.set_xlabel("audio contribution deviation Δ = s_av − s_v")
    ax.set_ylabel("videos")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Multi-modal sample selection at task {task}")
    _legend_outside(ax)
    return fig


# -- html --------------------------------------------------------------------------------

def _cell(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
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
                name: Callable[[int], str], collisions: Mapping[int, Mapping[str, Any]],
                config_text: str | None, timings: Mapping[str, float] | None = None) -> str:
    """The self-contained page: metrics table (with the seconds each task took, from
    ``timings.json``, when known), CL summary, the ``images`` ((file name, caption) pairs,
    linked relatively), top collision pairs, config."""
    timings = timings or {}
    sc = metrics["scenario"]
    title = f"{metrics['method']} — {sc['split']} {sc['mode']} ({sc['subset']})"
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>mIoU (%) after each task</h2>",
             _table(("task", "classes", "old", "new", "all", "seconds"),
                    [(row["task"], ", ".join(name(c) for c in row["classes"]),
                      *(_cell(row["miou"][k]) for k in _MIOU_KEYS),
                      timings.get(str(row["task"]), "-"))
                     for row in metrics["tasks"]])]
    summary = {k: v for k, v in metrics.get("summary", {}).items() if k != "num_tasks"}
    if summary:
        parts += ["<h2>Continual-learning summary (%)</h2>",
                  _table(tuple(summary), [[_cell(v) for v in summary.values()]])]
    for filename, caption in images:
        parts += [f"<h2>{html.escape(caption)}</h2>",
                  f'<img src="{filename}" alt="{html.escape(caption)}">']
    for t, record in collisions.items():
        if record.get("top_pairs"):
            parts += [f"<h2>Top collision pairs at task {t}</h2>",
                      _table(("old class", "new class", "pixels"),
                             [(name(p["old"]), name(p["new"]), p["pixels"])
                              for p in record["top_pairs"]])]
    if config_text is not None:
        parts += ["<h2>Config</h2>", f"<pre>{html.escape(config_text, quote=False)}</pre>"]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


# -- the report --------------------------------------------------------------------------

def build_figures(metrics: Mapping[str, Any], name: Callable[[int], str],
                  overlays: Sequence[Mapping[str, Any]],
                  collisions: Mapping[int, Mapping[str, Any]],
                  selections: Mapping[int, Mapping[str, Any]]) -> list[tuple[str, str, Figure]]:
    """(file name, caption, figure) of every plot whose input exists, in page order."""
    with matplotlib.rc_context(_STYLE):
        figures = [("accuracy_matrix.png", "Accuracy matrix", plot_accuracy_matrix(metrics)),
                   ("miou_per_task.png", "Old / new / all mIoU per task",
                    plot_miou_per_task(metrics)),
                   ("per_class_iou.png", "Per-class IoU after the last task",
                    plot_per_class_iou(metrics, name))]
        if overlays:
            figures.append(("overlays.png", "Qualitative examples (frame, ground truth, "
                            "prediction)", plot_overlays(overlays, name)))
        figures += [(f"collisions_{t}.png", f"Collision-based rehearsal, task {t}",
                     plot_collisions(t, record, name)) for t, record in collisions.items()]
        figures += [(f"mss_scores_{t}.png", f"Multi-modal sample selection, task {t}",
                     plot_mss_scores(t, record)) for t, record in selections.items()]
    return figures


def _replace_directory(staging: str, final: str) -> None:
    """Moves the finished ``staging`` directory to ``final``, dropping the old one."""
    previous = final + ".old"
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.isdir(final):
        os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)


def write_report(workdir: str, class_names: Sequence[str] | None = None,
                 overlays: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Renders ``DIR/report/`` from the workdir's files and returns the path of its
    ``index.html``. ``class_names`` / ``overlays`` (see the module docstring) default to the
    ones saved by the previous call; pass ``overlays=[]`` to drop them. The directory is
    built beside the old one and swapped in, so a report is never half written."""
    metrics = load_metrics(workdir)
    final = os.path.join(workdir, "report")
    names_path = os.path.join(final, "class_names.json")
    overlays_path = os.path.join(final, "overlays.npz")
    if class_names is None and os.path.exists(names_path):
        class_names = _read_json(names_path)
    if overlays is None:
        overlays = _load_overlays(overlays_path) if os.path.exists(overlays_path) else []
    _check_overlays(overlays)
    name = _namer(class_names, len(metrics["tasks"][-1]["per_class_iou"]))
    collisions = _memory_records(workdir, "collisions")
    figures = build_figures(metrics, name, overlays, collisions,
                            _memory_records(workdir, "task"))
    config_path = os.path.join(workdir, "config.json")
    config_text = None
    if os.path.exists(config_path):
        with open(config_path) as f:
            config_text = f.read()
    timings_path = os.path.join(workdir, "timings.json")
    timings = None
    if os.path.exists(timings_path):
        with open(timings_path) as f:
            timings = json.load(f)

    staging = final + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for filename, _, fig in figures:
        fig.savefig(os.path.join(staging, filename), dpi=DPI)
    if class_names is not None:
        with open(os.path.join(staging, "class_names.json"), "w") as f:
            json.dump(list(class_names), f)
    if overlays:
        _save_overlays(os.path.join(staging, "overlays.npz"), overlays)
    images = [(filename, caption) for filename, caption, _ in figures]
    with open(os.path.join(staging, "index.html"), "w", encoding="utf-8") as f:
        f.write(render_html(metrics, images, name, collisions, config_text, timings))
    _replace_directory(staging, final)
    return os.path.join(final, "index.html")


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


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m jax_cavs.report WORKDIR")
    try:
        print(write_report(argv[1]))
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main(sys.argv)
