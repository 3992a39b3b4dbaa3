"""Class-incremental scenarios for continual audio-visual segmentation.

A scenario turns a dataset's per-video class sets into a sequence of tasks, following the
conventions of the CMR paper (Hong et al. 2025, §4.1 and A.5.2) and of MiB/PLOP:

* ``"N-M"`` splits: N classes in the first task, then M new classes per task (``"60-10"``,
  ``"60-5"``, ``"65-1"`` on AVSBench; ``"12-4"`` on the small SynthAVS). ``"K-0"`` with K the
  number of foreground classes is the single-task (joint) setting.
* **overlapped**: classes in sequential (index) order; the training set of task t holds every
  video with at least one pixel of a class of t. Past and future classes in those videos are
  labelled background during training (the label remapping lives in ``streams``).
* **disjoint**: the class order comes from Louvain community detection on the class
  co-occurrence graph of the training labels (classes that appear together learn together),
  and the training set of task t holds only videos whose classes all belong to task t
  (``disjoint_rule="strict"``, spec_cavs §1.3 DECISION). ``"mib"`` relaxes it to "no future
  classes" (MiB's ``filter_images``).
* **class order**: ``class_order`` names one (``"sequential"``, ``"louvain"``, or one of the
  CMR authors' fixed AVSBench orders ``"60-10a"``, ``"60-5a"``, ``"65-s1"``, ``"65-ss"``,
  ``data/avsbench_classes.py``) or lists the foreground classes explicitly; empty: the mode's
  default above (sequential for overlapped, Louvain for disjoint).
* **CIS / CIM** subsets: only videos with exactly one / at least two sounding classes, for
  training and test alike.

The test set is the common test split (after the CIS/CIM filter); after each task it is scored
on all classes seen so far.
"""

from __future__ import annotations

import re
from typing import Sequence

import networkx as nx
import numpy as np

from jax_cavs.core.scenario import Scenario, TaskSpec
from jax_cavs.data import avsbench_classes

SUBSETS = ("all", "cis", "cim")
MODES = ("overlapped", "disjoint")
DISJOINT_RULES = ("strict", "mib")
CLASS_ORDER_NAMES = ("sequential", "louvain", *avsbench_classes.CMR_AUTHOR_ORDERS)


def parse_split(split: str, num_foreground: int) -> tuple[int, ...]:
    """``"N-M"`` -> task sizes (N, M, M, ...) covering exactly ``num_foreground`` classes."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", split)
    if not match:
        raise ValueError(
            f"config field scenario.split={split!r} is not of the form 'N-M' "
            f"(e.g. '60-10', or '{num_foreground}-0' for a single joint task).")
    first, step = int(match[1]), int(match[2])
    rest = num_foreground - first
    if first <= 0 or rest < 0 or (step == 0 and rest) or (step and rest % step):
        raise ValueError(
            f"config field scenario.split={split!r} does not fit the dataset's "
            f"{num_foreground} foreground classes: need N + k*M == {num_foreground} with N >= 1 "
            f"(e.g. '{max(num_foreground - 4, 1)}-4' if that divides, or "
            f"'{num_foreground}-0' for joint training).")
    return (first,) + (step,) * (rest // step if step else 0)


def louvain_class_order(class_sets: Sequence[Sequence[int]], num_classes: int,
                        seed: int = 0) -> tuple[int, ...]:
    """Orders the foreground classes community by community.

    Builds the co-occurrence graph of the training videos (an edge weight counts the videos in
    which two classes sound together), runs Louvain (``networkx.community.louvain_communities``,
    seeded), and concatenates the communities ordered by their smallest class id, classes
    sorted within a community. Classes that never occur are appended at the end.
    """
    graph = nx.Graph()
    graph.add_nodes_from(range(1, num_classes))
    for classes in class_sets:
        classes = sorted(set(int(c) for c in classes if c != 0))
        for i, a in enumerate(classes):
            for b in classes[i + 1:]:
                weight = graph.get_edge_data(a, b, {"weight": 0})["weight"]
                graph.add_edge(a, b, weight=weight + 1)
    communities = nx.community.louvain_communities(graph, weight="weight", seed=seed)
    ordered = sorted((sorted(c) for c in communities), key=lambda c: c[0])
    return tuple(c for community in ordered for c in community)


def resolve_class_order(class_order: str | Sequence[int] | None,
                        train_classes: Sequence[Sequence[int]], num_classes: int, split: str,
                        mode: str, subset: str, seed: int = 0) -> tuple[int, ...]:
    """The foreground classes in task order for ``config.scenario.class_order``.

    ``class_order`` is a name of ``CLASS_ORDER_NAMES``, an explicit sequence of class ids, or
    empty/None (the mode's default: sequential for overlapped, Louvain for disjoint). The
    authors' AVSBench orders exist only for AVSBench-semantic's 70 classes and their split.
    """
    if class_order is None or (not isinstance(class_order, str) and len(class_order) == 0):
        class_order = "louvain" if mode == "disjoint" else "sequential"
    if isinstance(class_order, str):
        if class_order not in CLASS_ORDER_NAMES:
            raise ValueError(f"config field scenario.class_order={class_order!r} is not one of "
                             f"{CLASS_ORDER_NAMES} (or an explicit tuple of class ids).")
        if class_order == "sequential":
            return tuple(range(1, num_classes))
        if class_order == "louvain":
            return louvain_class_order(train_classes, num_classes, seed)
        if num_classes != avsbench_classes.AVSS_NUM_CLASSES:
            raise ValueError(f"config field scenario.class_order={class_order!r} is an "
                             f"AVSBench-semantic order of 70 classes; this dataset has "
                             f"{num_classes - 1}: use 'sequential', 'louvain' or a tuple.")
        return avsbench_classes.author_class_order(class_order, split.strip(), subset)
    return tuple(int(c) for c in class_order)


def _subset_filter(class_sets: Sequence[Sequence[int]], subset: str) -> np.ndarray:
    sizes = np.array([len(c) for c in class_sets])
    if subset == "all":
        return sizes >= 0
    if subset == "cis":
        return sizes == 1
    return sizes >= 2


def build_scenario(train_classes: Sequence[Sequence[int]],
                   test_classes: Sequence[Sequence[int]],
                   num_classes: int,
                   split: str,
                   mode: str = "overlapped",
                   subset: str = "all",
                   disjoint_rule: str = "strict",
                   class_order: str | Sequence[int] | None = None,
                   joint: bool = False,
                   seed: int = 0,
                   val_classes: Sequence[Sequence[int]] = ()) -> Scenario:
    """Builds a scenario from per-video GT class sets (bg excluded) of the train/test splits.

    Args:
      train_classes / test_classes: for every record index of the split, its sounding classes.
      num_classes: K, outputs including background.
      split: ``"N-M"``.
      mode: ``"overlapped"`` or ``"disjoint"``.
      subset: ``"all"``, ``"cis"`` (single-source) or ``"cim"`` (multi-source).
      disjoint_rule: ``"strict"`` (videos only of the task's classes) or ``"mib"`` (no future
        classes).
      class_order: a name of ``CLASS_ORDER_NAMES`` or an explicit order of the foreground
        classes (``resolve_class_order``); None/empty: sequential for overlapped, Louvain for
        disjoint.
      joint: collapse the split into one task with every class (offline upper bound); the
        split's tasks are kept as ``report_groups``.
      val_classes: per record of the validation split (AVSBench's ``val``; empty: none), its
        classes. Like the test records, every one (subset-filtered) validates every task, over
        the classes seen so far.
    """
    for field, value, allowed in (("scenario.mode", mode, MODES),
                                  ("scenario.subset", subset, SUBSETS),
                                  ("scenario.disjoint_rule", disjoint_rule, DISJOINT_RULES)):
        if value not in allowed:
            raise ValueError(f"config field {field}={value!r} is not one of {allowed}.")
    sizes = parse_split(split, num_classes - 1)
    class_order = resolve_class_order(class_order, train_classes, num_classes, split, mode,
                                      subset, seed)
    if sorted(class_order) != list(range(1, num_classes)):
        raise ValueError(f"config field scenario.class_order must be a permutation of "
                         f"1..{num_classes - 1}; got {class_order}.")
    bounds = np.cumsum((0,) + sizes)
    groups = tuple(tuple(sorted(class_order[a:b])) for a, b in zip(bounds[:-1], bounds[1:]))
    task_classes = (tuple(sorted(class_order)),) if joint else groups

    train_keep = _subset_filter(train_classes, subset)
    val_indices = (np.flatnonzero(_subset_filter(val_classes, subset)) if len(val_classes)
                   else np.zeros((0,), np.int64))
    tasks = []
    for t, classes in enumerate(task_classes):
        current = set(classes)
        allowed = set(c for group in task_classes[:t + 1] for c in group)
        chosen = []
        for i, video in enumerate(train_classes):
            video = set(video)
            if not train_keep[i] or not video & current:
                continue
            if mode == "disjoint" and not joint:
                if not video <= (current if disjoint_rule == "strict" else allowed):
                    continue
            chosen.append(i)
        if not chosen:
            raise ValueError(
                f"task {t} (classes {classes}) of scenario {split} {mode}/{subset} has no "
                f"training video after filtering; choose another split, mode or subset.")
        tasks.append(TaskSpec(index=t, classes=classes,
                              train_indices=np.asarray(chosen, np.int64),
                              val_indices=val_indices))
    test_indices = np.flatnonzero(_subset_filter(test_classes, subset))
    return Scenario(name=split, mode=mode, subset=subset, num_classes=num_classes,
                    class_order=class_order, tasks=tuple(tasks), test_indices=test_indices,
                    report_groups=groups)
