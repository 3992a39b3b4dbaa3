"""CAVS's panels of the run report (``core.report``): per-class IoU, qualitative overlays,
and CMR's memory statistics.

Inputs beside the generic ones:

* ``memory/task_<t>.json`` (optional, CMR's MSS, spec_cavs §6.2)::

      {"task": t, "classes": {"<c>": {
          "selected": [{"id": 12, "av": 0.61, "v": 0.55, "deviation": 0.06}, ...],
          "scored":   [... the same records for every video scored for c (optional) ...]}}}

* ``memory/collisions_<t>.json`` (optional, CMR's CSR, spec_cavs §6.3)::

      {"task": t, "classes": {"<old c>": {"collisions": 120, "frequency": 2.0,
                                           "probability": 0.31}},
       "top_pairs": [{"old": 3, "new": 7, "pixels": 1042}, ...]}

* passed by the caller (both persisted under ``report/`` so a re-render keeps them):
  ``class_names``, a list of K names indexed by class id (0 = background), and ``overlays``,
  a list of qualitative examples, each ``{"frame": uint8 [H, W, 3], "label": int [H, W],
  "pred": int [H, W], "title": str}`` (label/pred in 0..K-1, 255 = ignore).

Sections it adds: the audio-dependence table (metrics.json's ``tasks[t].audio_dependence``,
when the run measured it) and the top collision pairs.

Files it adds to a report (optional ones only when their input exists): ``per_class_iou.png``,
``overlays.png``, ``collisions_<t>.png``, ``mss_scores_<t>.png``, and the persisted inputs
``class_names.json`` and ``overlays.npz``. File names keep the 0-based task index of
``metrics.json``; titles and captions number tasks from 1, as a person counts them.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from jax_cavs.core import report
from jax_cavs.core.report import (GROUP_COLOURS, bar_width, figure, group_colour,
                                  legend_outside, read_json)
from jax_cavs.problems.cavs.audio_dependence import VARIANTS

OVERLAY_ALPHA = 0.5


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


def _memory_records(workdir: str, prefix: str) -> dict[int, dict[str, Any]]:
    """{task: record} of ``DIR/memory/<prefix>_<t>.json``, sorted by task."""
    directory = os.path.join(workdir, "memory")
    if not os.path.isdir(directory):
        return {}
    found = {}
    for name in os.listdir(directory):
        match = re.fullmatch(rf"{prefix}_(\d+)\.json", name)
        if match:
            found[int(match.group(1))] = read_json(os.path.join(directory, name))
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


def plot_per_class_iou(metrics: Mapping[str, Any], name: Callable[[int], str]) -> Figure:
    """IoU (%) of every class scored after the last task, ordered and coloured by the task
    group that introduced it (background belongs to group 0)."""
    last = metrics["tasks"][-1]
    groups = metrics["scenario"]["groups"]
    ordered = [(0, 0)] + [(j, c) for j, group in enumerate(groups) for c in group]
    bars = [(j, c, last["per_class_iou"][c]) for j, c in ordered
            if c < len(last["per_class_iou"]) and last["per_class_iou"][c] is not None]
    fig, axes = figure(bar_width(len(bars)), 4.5)
    ax = axes[0, 0]
    ax.bar(range(len(bars)), [100.0 * iou for _, _, iou in bars],
           color=[group_colour(j) for j, _, _ in bars])
    ax.set_xticks(range(len(bars)), [name(c) for _, c, _ in bars], rotation=90)
    ax.set_xlim(-0.6, len(bars) - 0.4)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"Per-class IoU after task {last['task'] + 1}")
    present = sorted({j for j, _, _ in bars})
    legend_outside(ax, handles=[Patch(color=group_colour(j), label=f"task {j + 1}")
                                 for j in present])
    return fig


def overlay_legend(label: np.ndarray, pred: np.ndarray, name: Callable[[int], str]
                   ) -> list[tuple[str, tuple[float, float, float]]]:
    """(text, RGB in [0, 1]) per class an example's masks colour: its name and where it
    appears (GT, pred or both), with its palette colour; the ignore label as "ignored"."""
    entries = []
    for c in np.union1d(np.unique(label), np.unique(pred)):
        c = int(c)
        if c == 0:
            continue  # background: the frame is left as it is
        where = ", ".join(k for k, mask in (("GT", label), ("pred", pred)) if (mask == c).any())
        text = "ignored" if c == 255 else f"{name(c)} ({where})"
        entries.append((text, tuple(float(v) / 255.0 for v in PALETTE[c])))
    return entries


def plot_overlays(overlays: Sequence[Mapping[str, Any]], name: Callable[[int], str]) -> Figure:
    """One row per example: the frame, ground truth and prediction blended over it, and a
    legend naming the colour of every class the two masks show (titles wrapped to their
    panel, so a long one never runs into its neighbour)."""
    fig, axes = figure(9.0, 2.6 * len(overlays), nrows=len(overlays), ncols=4,
                       width_ratios=(1.0, 1.0, 1.0, 0.9))
    for row, example in zip(axes, overlays):
        frame = np.asarray(example["frame"])
        label, pred = np.asarray(example["label"]), np.asarray(example["pred"])
        row[0].imshow(frame)
        row[0].set_title(textwrap.fill(str(example["title"]), 26), fontsize=8)
        for ax, mask, caption in ((row[1], label, "ground truth"), (row[2], pred, "prediction")):
            ax.imshow(blend_mask(frame, mask))
            ax.set_title(caption, fontsize=8)
        entries = overlay_legend(label, pred, name)
        row[3].legend(handles=[Patch(color=colour, label=text) for text, colour in entries]
                      or [Patch(color="none", label="background only")],
                      loc="center left", fontsize=7, frameon=False, borderaxespad=0.0)
        for ax in row:
            ax.set_axis_off()
    return fig


def plot_collisions(task: int, record: Mapping[str, Any], name: Callable[[int], str]) -> Figure:
    """CSR at one task (spec_cavs §6.3): significant-collision frequency f_c (eq 8) and replay
    probability p_c (eq 9) of every old class."""
    classes = sorted(record["classes"], key=int)
    stats = [record["classes"][c] for c in classes]
    fig, axes = figure(bar_width(len(classes)), 5.0, nrows=2, sharex=True)
    for ax, key, label in ((axes[0, 0], "frequency", "significant collisions f_c"),
                           (axes[1, 0], "probability", "replay probability p_c")):
        ax.bar(range(len(classes)), [s[key] for s in stats], color=GROUP_COLOURS[0])
        ax.set_ylabel(label)
    axes[1, 0].set_xticks(range(len(classes)), [name(int(c)) for c in classes], rotation=90)
    axes[0, 0].set_title(f"Collision-based rehearsal at task {task + 1}")
    return fig


def _deviations(record: Mapping[str, Any], key: str) -> np.ndarray:
    return np.asarray([s["deviation"] for entry in record["classes"].values()
                       for s in entry.get(key, [])], np.float64)


def plot_mss_scores(task: int, record: Mapping[str, Any]) -> Figure:
    """MSS at one task (spec_cavs §6.2): histogram of the audio contribution deviation
    Δ = s_av − s_v (eq 5) of the selected videos, over that of all scored videos if saved."""
    selected, scored = _deviations(record, "selected"), _deviations(record, "scored")
    edges = np.histogram_bin_edges(np.concatenate([selected, scored]), bins=20)
    fig, axes = figure(6.0, 4.0)
    ax = axes[0, 0]
    if scored.size:
        ax.hist(scored, bins=edges, color="0.7", label=f"all scored (n={scored.size})")
    ax.hist(selected, bins=edges, color=GROUP_COLOURS[1], alpha=0.85,
            label=f"selected (n={selected.size})")
    ax.set_xlabel("audio contribution deviation Δ = s_av − s_v")
    ax.set_ylabel("videos")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Multi-modal sample selection at task {task + 1}")
    legend_outside(ax)
    return fig


def collision_sections(collisions: Mapping[int, Mapping[str, Any]],
                       name: Callable[[int], str]) -> list[str]:
    """html tables of the top (old, new) collision pairs of every task."""
    parts = []
    for t, record in collisions.items():
        if record.get("top_pairs"):
            parts += [f"<h2>Top collision pairs at task {t + 1}</h2>",
                      report.table(("old class", "new class", "pixels"),
                                   [(name(p["old"]), name(p["new"]), p["pixels"])
                                    for p in record["top_pairs"]])]
    return parts


def audio_dependence_section(metrics: Mapping[str, Any]) -> list[str]:
    """html table of every task's ``audio_dependence`` (``audio_dependence`` module doc):
    test mIoU (%) with the true audio, silence and another clip's audio, on all test clips and
    on those with a silent look-alike distractor; [] for a run without the probe."""
    rows = []
    for row in metrics["tasks"]:
        probe = row.get("audio_dependence")
        if probe:
            subset = probe["distractor_clips"]
            rows.append((row["task"] + 1, *(report.cell(probe[k]) for k in VARIANTS),
                         *(report.cell(subset[k]) for k in VARIANTS), subset["num_clips"]))
    if not rows:
        return []
    header = ("after task", *(f"{clips}: {audio}" for clips in ("all clips", "distractor clips")
                              for audio in ("true audio", "silence", "other clip's audio")),
              "distractor clips")
    return ["<h2>Audio dependence: test mIoU (%) by the audio fed</h2>",
            report.table(header, rows)]


class CAVSPanels:
    """``core.report.Panels`` of a CAVS workdir (module doc); ``class_names`` / ``overlays``
    default to the ones the previous report saved (``overlays=[]`` drops them)."""

    def __init__(self, workdir: str, class_names: Sequence[str] | None = None,
                 overlays: Sequence[Mapping[str, Any]] | None = None):
        previous = os.path.join(workdir, "report")
        names_path = os.path.join(previous, "class_names.json")
        overlays_path = os.path.join(previous, "overlays.npz")
        if class_names is None and os.path.exists(names_path):
            class_names = read_json(names_path)
        if overlays is None:
            overlays = _load_overlays(overlays_path) if os.path.exists(overlays_path) else []
        _check_overlays(overlays)
        metrics = report.load_metrics(workdir)
        self.class_names, self.overlays = class_names, list(overlays)
        self.name = _namer(class_names, len(metrics["tasks"][-1]["per_class_iou"]))
        self.collisions = _memory_records(workdir, "collisions")
        self.selections = _memory_records(workdir, "task")

    def figures(self, metrics) -> list[tuple[str, str, Figure]]:
        figures = [("per_class_iou.png", "Per-class IoU after the last task",
                    plot_per_class_iou(metrics, self.name))]
        if self.overlays:
            figures.append(("overlays.png", "Qualitative examples (frame, ground truth, "
                            "prediction)", plot_overlays(self.overlays, self.name)))
        figures += [(f"collisions_{t}.png", f"Collision-based rehearsal, task {t + 1}",
                     plot_collisions(t, record, self.name))
                    for t, record in self.collisions.items()]
        figures += [(f"mss_scores_{t}.png", f"Multi-modal sample selection, task {t + 1}",
                     plot_mss_scores(t, record)) for t, record in self.selections.items()]
        return figures

    def sections(self, metrics) -> list[str]:
        return audio_dependence_section(metrics) + collision_sections(self.collisions,
                                                                      self.name)

    def persist(self, directory: str) -> None:
        if self.class_names is not None:
            with open(os.path.join(directory, "class_names.json"), "w") as f:
                json.dump(list(self.class_names), f)
        if self.overlays:
            _save_overlays(os.path.join(directory, "overlays.npz"), self.overlays)


def write_report(workdir: str, class_names: Sequence[str] | None = None,
                 overlays: Sequence[Mapping[str, Any]] | None = None) -> str:
    """``core.report.write_report`` with CAVS's panels; returns the ``index.html`` path."""
    return report.write_report(workdir, CAVSPanels(workdir, class_names, overlays))
