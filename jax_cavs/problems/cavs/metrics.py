"""Segmentation metrics: the CAVS mIoU (MiB/PLOP convention) and AVSBench's per-frame scores.

**CAVS metric** (spec_cavs §1.3, [PLOP:metrics/stream_metrics.py StreamSegMetrics]): one
confusion matrix accumulated over the whole test set (rows = ground truth, columns =
prediction); ``IoU_c = TP / (TP + FP + FN + 1e-6)`` and mIoU = mean over the classes present in
the ground truth (background included). ``confusion_matrix`` is the jit-able per-batch part;
accumulate its int32 output in an int64 numpy array on the host (a test set has ~10^9 pixels).

**Reporting groups** (``report_groups``; spec §1.3 DECISION, paper columns "1-60 | 61-71 |
all"): by default old = background + the first task's classes, new = the classes of every
later task, all = every class learned so far, matching PLOP's ``average_csv.py``. For two
tasks (60-10) this is also "bg + classes before the last task" vs "the last task", which
``split="last"`` gives for longer scenarios.

**AVSBench metric** (spec §2.6, [AVSB:utils/compute_color_metrics.py _batch_miou_fscore],
[AVSB:test.py]): per frame and class, intersection / union / F-score with β² = 0.3; dataset
scores sum them over frames, divide by the number of frames where the class has a nonzero
union (NaN -> 0) and average over *all* classes. ``per_frame_miou`` gives one mIoU per frame,
used by MSS (spec §6.2).

Ignored pixels (label == ``ignore_index``, or outside [0, K)) are excluded everywhere, from
the prediction areas too (AVSS has no ignore label, so AVSBench numbers are unaffected).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.data import IGNORE_INDEX

PLOP_EPS = 1e-6
AVSBENCH_BETA2 = 0.3
PER_FRAME_CONVENTIONS = ("union", "avsbench")
REPORT_SPLITS = ("first", "last")


def _as_float32(x) -> jnp.ndarray:
    """Counts as float32 without the int64 -> int32 truncation of ``jnp.asarray``."""
    if isinstance(x, jax.Array):
        return x.astype(jnp.float32)
    return jnp.asarray(np.asarray(x, np.float64), jnp.float32)


def _valid_pixels(label: jnp.ndarray, num_classes: int, ignore_index: int) -> jnp.ndarray:
    return (label >= 0) & (label < num_classes) & (label != ignore_index)


def confusion_matrix(pred: jnp.ndarray, label: jnp.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX,
                     weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """Pixel confusion matrix of one batch (rows = ground truth, columns = prediction).

    Uses a segment sum over ``label * K + pred`` (no [pixels, K] one-hot).

    Args:
      pred: int [...] predicted classes in [0, K).
      label: int [...] same shape; ``ignore_index`` and values outside [0, K) are skipped.
      num_classes: K (static).
      ignore_index: ignored label.
      weights: optional array broadcastable to ``label``; a pixel is counted (once) where it
        is nonzero, e.g. 0 on padded or unannotated frames.

    Returns:
      int32 [K, K].
    """
    counted = _valid_pixels(label, num_classes, ignore_index)
    if weights is not None:
        counted &= jnp.broadcast_to(weights, label.shape) != 0
    index = jnp.where(counted, label * num_classes + pred, 0)
    counts = jax.ops.segment_sum(counted.astype(jnp.int32).ravel(), index.ravel(),
                                 num_segments=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def miou(confusion) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean IoU and per-class IoU from a confusion matrix (MiB/PLOP convention).

    Args:
      confusion: int or float [K, K] (numpy int64 accepted), rows = ground truth.

    Returns:
      (mean float32 scalar, per_class float32 [K]). ``per_class[c] = TP / (TP + FP + FN +
      1e-6)`` and is **NaN for classes absent from the ground truth** (PLOP prints "X"); the
      mean runs over the present classes (NaN if none).
    """
    confusion = _as_float32(confusion)
    true_positive = jnp.diag(confusion)
    gt_total = jnp.sum(confusion, axis=1)
    pred_total = jnp.sum(confusion, axis=0)
    iou = true_positive / (gt_total + pred_total - true_positive + PLOP_EPS)
    present = gt_total > 0
    per_class = jnp.where(present, iou, jnp.nan)
    return _mean_where(iou, present), per_class


def _mean_where(values: jnp.ndarray, selected: jnp.ndarray) -> jnp.ndarray:
    count = jnp.sum(selected)
    total = jnp.sum(jnp.where(selected, values, 0.0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


ABSENT_CLASSES = ("exclude", "zero")


def group_miou(per_class: jnp.ndarray, confusion, classes_mask,
               absent: str = "exclude") -> jnp.ndarray:
    """mIoU over a group of classes (old / new / all columns of the CMR tables).

    DECISION: by default (``absent="exclude"``) the mean runs over the group's classes
    *present in the ground truth*, the same rule as ``miou``. ``absent="zero"`` is the CMR
    authors' rule: their per-class IoU ``diag / (row + col - diag + 1e-6)`` is 0 for a class
    absent from the ground truth (``avss/utils/compute_color_metrics.py:112``), and the
    old / new columns are plain means over the group's classes
    (``avss/test.py:200-201``), as PLOP's ``average_csv.py`` also counts them. The two agree
    whenever every class of the group occurs in the test set.

    Args:
      per_class: float [K] from ``miou``.
      confusion: [K, K] the matrix ``per_class`` came from (decides presence).
      classes_mask: bool [K] the group, e.g. from ``report_groups``.
      absent: ``"exclude"`` or ``"zero"`` (above).

    Returns:
      float32 scalar (NaN if the group is empty or, excluding absent classes, none of its
      classes is present).
    """
    if absent not in ABSENT_CLASSES:
        raise ValueError(f"eval.absent_classes: {absent!r} is not one of {ABSENT_CLASSES}.")
    group = jnp.asarray(classes_mask, bool)
    if absent == "zero":
        return _mean_where(jnp.nan_to_num(per_class, nan=0.0), group)
    present = _as_float32(confusion).sum(axis=1) > 0
    return _mean_where(per_class, present & group)


def report_groups(task_classes: Sequence[Sequence[int]], num_classes: int,
                  split: str = "first") -> dict[str, np.ndarray]:
    """Class groups of the result tables after learning ``task_classes``.

    Args:
      task_classes: the classes of tasks 0..t (foreground indices, background excluded),
        e.g. ``[range(1, 61), range(61, 71)]`` for 60-10.
      num_classes: K.
      split: ``"first"`` (default; the paper's columns "1-60 | 61-71", PLOP's
        ``average_csv.py``): old = {0} ∪ task 0, new = tasks 1..t. ``"last"``: old = {0} ∪
        tasks 0..t-1, new = task t (the two agree for two tasks).

    Returns:
      bool [K] masks ``old``, ``new`` and ``all`` = old ∪ new.
    """
    if not task_classes:
        raise ValueError("report_groups: task_classes must list at least one task.")
    if split not in REPORT_SPLITS:
        raise ValueError(f"report_groups: split={split!r} is not one of {REPORT_SPLITS}.")
    first_new_task = 1 if split == "first" else len(task_classes) - 1
    old = np.zeros(num_classes, bool)
    new = np.zeros(num_classes, bool)
    old[0] = True
    for index, classes in enumerate(task_classes):
        target = new if index >= max(first_new_task, 1) else old
        target[list(classes)] = True
    return {"old": old, "new": new, "all": old | new}


def class_areas(pred: jnp.ndarray, label: jnp.ndarray, num_classes: int,
                ignore_index: int = IGNORE_INDEX
                ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per-frame, per-class pixel counts.

    Args:
      pred, label: int [..., H, W]; every leading index is a frame.
      num_classes: K (static).
      ignore_index: ignored label (its pixels are left out of all three counts).

    Returns:
      (intersection, pred_area, label_area), each int32 [..., K].
    """
    leading = label.shape[:-2]
    num_frames = int(np.prod(leading, dtype=np.int64))
    label = label.reshape(num_frames, -1)
    pred = pred.reshape(num_frames, -1)
    valid = _valid_pixels(label, num_classes, ignore_index)
    offset = jnp.arange(num_frames)[:, None] * num_classes

    def count(classes, included):
        index = offset + jnp.where(included, classes, 0)
        counts = jax.ops.segment_sum(included.astype(jnp.int32).ravel(), index.ravel(),
                                     num_segments=num_frames * num_classes)
        return counts.reshape(leading + (num_classes,))

    return (count(label, valid & (pred == label)), count(pred, valid), count(label, valid))


def avsbench_frame_scores(intersection: jnp.ndarray, pred_area: jnp.ndarray,
                          label_area: jnp.ndarray, beta2: float = AVSBENCH_BETA2
                          ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """AVSBench per-frame, per-class IoU, F-score and "class occurs" flags.

    ``iou = inter / union`` (0 where union = 0; the reference's 2.2e-16 epsilon is below
    float32 resolution for integer unions); ``F = (1 + β²) P R / (β² P + R)`` with
    ``P = inter / pred``, ``R = inter / label`` and NaN -> 0, so F = 0 whenever inter = 0.

    Args:
      intersection, pred_area, label_area: int [..., K] from ``class_areas``.
      beta2: β² (0.3).

    Returns:
      (iou float32 [..., K], fscore float32 [..., K], present bool [..., K] = union > 0).
    """
    inter = intersection.astype(jnp.float32)
    pred = pred_area.astype(jnp.float32)
    lab = label_area.astype(jnp.float32)
    union = pred + lab - inter
    iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    hit = inter > 0  # implies pred > 0 and lab > 0
    precision = inter / jnp.where(hit, pred, 1.0)
    recall = inter / jnp.where(hit, lab, 1.0)
    fscore = jnp.where(hit, (1 + beta2) * precision * recall
                       / jnp.where(hit, beta2 * precision + recall, 1.0), 0.0)
    return iou, fscore, union > 0


def avsbench_batch_sums(pred: jnp.ndarray, label: jnp.ndarray, num_classes: int,
                        frame_weights: jnp.ndarray | None = None,
                        ignore_index: int = IGNORE_INDEX, beta2: float = AVSBENCH_BETA2
                        ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One batch's contribution to AVSBench's dataset scores (jit-able).

    Args:
      pred, label: int [..., H, W].
      num_classes: K.
      frame_weights: optional float/bool [...] (0 drops a frame; the reference counts padded
        frames, pass ``None`` to reproduce that quirk).
      ignore_index, beta2: as above.

    Returns:
      (iou_sum, fscore_sum, class_count), each float32 [K]: Σ over frames of iou, F and
      1[union > 0].
    """
    iou, fscore, present = avsbench_frame_scores(
        *class_areas(pred, label, num_classes, ignore_index), beta2=beta2)
    if frame_weights is None:
        weight = jnp.ones(iou.shape[:-1] + (1,), jnp.float32)
    else:
        weight = (jnp.asarray(frame_weights) != 0).astype(jnp.float32)[..., None]
    axes = tuple(range(iou.ndim - 1))
    return (jnp.sum(iou * weight, axis=axes), jnp.sum(fscore * weight, axis=axes),
            jnp.sum(present * weight, axis=axes))


def avsbench_dataset_scores(iou_sum, fscore_sum, class_count) -> dict[str, jnp.ndarray]:
    """AVSBench test-set scores from accumulated ``avsbench_batch_sums`` ([AVSB:test.py]).

    Returns:
      dict with ``miou`` and ``fscore`` (float32 scalars: mean over all K classes of the
      per-class value, classes never occurring count as 0) and ``per_class_iou`` /
      ``per_class_fscore`` (float32 [K]).
    """
    count = _as_float32(class_count)
    safe = jnp.where(count > 0, count, 1.0)
    per_class_iou = jnp.where(count > 0, _as_float32(iou_sum) / safe, 0.0)
    per_class_fscore = jnp.where(count > 0, _as_float32(fscore_sum) / safe, 0.0)
    return {"miou": jnp.mean(per_class_iou), "fscore": jnp.mean(per_class_fscore),
            "per_class_iou": per_class_iou, "per_class_fscore": per_class_fscore}


def per_frame_miou(pred: jnp.ndarray, label: jnp.ndarray, num_classes: int,
                   convention: str = "union", ignore_index: int = IGNORE_INDEX
                   ) -> jnp.ndarray:
    """mIoU of every frame, background included (spec §6.2 DECISION for MSS).

    Conventions:
      ``"union"``: mean of IoU_c over the classes with union > 0 (a class predicted but absent,
        or present but missed, counts as 0). Recommended.
      ``"avsbench"``: ``Σ_c IoU_c / #{c: IoU_c > 0}`` (the reference's ``vid_miou_list``);
        ignores classes with union > 0 but no intersection.

    Args:
      pred, label: int [..., H, W].
      num_classes: K (static).
      convention: ``"union"`` or ``"avsbench"``.
      ignore_index: ignored label.

    Returns:
      float32 [...]; NaN for a frame without valid pixels ("union") or without any
      intersecting class ("avsbench", as the reference).
    """
    if convention not in PER_FRAME_CONVENTIONS:
        raise ValueError(f"per_frame_miou: convention={convention!r} is not one of "
                         f"{PER_FRAME_CONVENTIONS}.")
    iou, _, present = avsbench_frame_scores(
        *class_areas(pred, label, num_classes, ignore_index))
    counted = present if convention == "union" else iou > 0
    count = jnp.sum(counted, axis=-1)
    total = jnp.sum(jnp.where(counted, iou, 0.0), axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
