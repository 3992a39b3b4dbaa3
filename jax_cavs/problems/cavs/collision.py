"""CSR, Collision-based Sample Rehearsal (CMR eqs 6-9, Algorithm 1; spec_cavs §6.3).

At the start of task t the frozen old model f_{t-1} segments the new task's training videos.
A **collision** is a pixel whose ground truth is a new class (``current``) and whose old-model
prediction is an old *non-background* class: the old model mistakes the new object for an old
one, typically because the two co-occur. CSR replays the old classes that collide most:

1. ``collision_counts`` (jit'd, one call per batch): N_i(c), the collision pixels of every old
   class c in every annotated frame, and the (old, new) pair counts for analysis.
2. ``most_confusing`` (eqs 6-7): c*_i = argmax_c N_i(c) and r_i = N_i(c*_i) / Σ_c N_i(c) per
   counting unit i (a video by default, a frame as option); units without collision skipped.
3. ``significance_threshold``: r̄ (rules below); a unit is a *significant* collision of c*_i
   when r_i > r̄.
4. ``collision_frequency`` (eq 8): f_c = #significant units with c*_i = c; f_c = 0 -> 1.
5. ``replay_probabilities`` (eq 9): p_c = σ(f_c) / Σ_c' σ(f_c') over the old foreground classes.
6. ``resample``: n_R = round(ratio · |M|) draws, class c ~ p, then a video uniformly from the
   memory videos of c, with replacement; the task trains on D_t ∪ M ⊎ R.

The statistics are host-side pure numpy functions of the counts, so every step can be checked
against hand-computed values on tiny masks.

DECISIONS (spec §6.3, each a config field of ``strategies.cmr.CMR``):

* ``unit``: ``"video"`` (default, recommended) counts N_i(c) over all annotated frames of video
  i; ``"frame"`` computes c* and r for every annotated frame with a collision and counts
  significant *frames* in f_c (the paper's "in a single frame"); ``"video_pair"`` is the
  authors' code (``avss/train.py:67-162``): per video the most common (old, new) *pair* of
  its collision pixels and that pair's share of them, c* = the pair's old class (ties: the
  smallest old, then new, id; their ``Counter.most_common`` keeps first-seen order).
* ``significance``: ``"mean"`` (A, default) r̄ = mean of r_i over the colliding units of the task
  (the only rule that really filters); ``"uniform"`` (B) r̄ = 1 / |C_{1:t-1}| (old foreground
  classes); ``"class_mean"`` (C) r̄ = mean over the old classes that are some unit's c* of the
  per-class mean of r; ``"fixed"`` r̄ = ``share`` (0.7 in the authors' code,
  ``avss/train.py:129``). The comparison is strict (r_i > r̄), as the paper's prose says, so with
  rule A a task whose colliding units all have the same ratio has no significant collision and
  every f_c falls back to 1 (uniform replay).
* ``smoothing``: ``"sigmoid"`` (default, the paper's eq 9; σ(f) ∈ [0.73, 1) for f >= 1, so
  p_max / p_min <= 1.37: a mild reweighting); ``"standardized"`` σ((f - mean f) / std f) is
  **our invention**, not the paper's, for a stronger effect (std 0 -> uniform).
* Background is never a collision class and never replayed (memory is indexed by foreground
  class). ``resample`` rounds half up (round(0.2 · 12) = 2, round(0.2 · 15) = 3) and draws
  once per task (spec §6.3 step 7, "per epoch" is the alternative not taken). Classes whose
  memory holds no video cannot be drawn: their probability is dropped and p renormalised.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.data import IGNORE_INDEX
from jax_cavs.core import hostpass, xla
from jax_cavs.problems.cavs import metrics as seg_metrics

COUNTING_UNITS = ("video", "frame", "video_pair")
SIGNIFICANCE_RULES = ("mean", "uniform", "class_mean", "fixed")
AUTHORS_SHARE = 0.7  # avss/train.py:129
SMOOTHINGS = ("sigmoid", "standardized")


def _check(value: str, valid: Sequence[str], field: str) -> None:
    if value not in valid:
        raise ValueError(f"config field strategy.{field}={value!r} is not one of "
                         f"{tuple(valid)}.")


# -- counting (jit-able) -------------------------------------------------------------------

def _colliding_labels(pred, labels, old, current, frame_weights, num_classes):
    """``labels`` where the pixel collides (a ``current`` label, an ``old`` foreground
    prediction, an annotated frame), 255 elsewhere."""
    old = jnp.asarray(old).at[0].set(False)  # background predictions are not collisions
    in_range = (labels >= 0) & (labels < num_classes)
    safe_labels = jnp.where(in_range, labels, 0)
    safe_pred = jnp.clip(pred, 0, num_classes - 1)
    colliding = (in_range & jnp.asarray(current)[safe_labels] & old[safe_pred]
                 & (jnp.asarray(frame_weights) != 0)[..., None, None])
    return jnp.where(colliding, labels, IGNORE_INDEX)


def collision_counts(pred: jnp.ndarray, labels: jnp.ndarray, old: jnp.ndarray,
                     current: jnp.ndarray, frame_weights: jnp.ndarray, num_classes: int
                     ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Collision pixels of one batch (spec §6.3 step 1).

    A pixel collides when its label is a class of ``current`` and the old model predicts a
    class of ``old`` other than background (0), in a frame with nonzero ``frame_weights``.

    Args:
      pred: int [N, T, H, W] old-model prediction (argmax over the old classes).
      labels: int [N, T, H, W] the task's labels (current classes, 0 elsewhere, 255 ignored).
      old: bool [K] classes of the old model (background included).
      current: bool [K] the task's new classes.
      frame_weights: float/bool [N, T]; 0 on unannotated frames and padded clips.
      num_classes: K (static).

    Returns:
      (per_frame int32 [N, T, K]: N(c) per frame, nonzero only for old foreground c;
       pairs int32 [K, K]: pixels with old prediction ``o`` (row) and new label ``n`` (column),
       summed over the batch).
    """
    kept = _colliding_labels(pred, labels, old, current, frame_weights, num_classes)
    _, per_frame, _ = seg_metrics.class_areas(pred, kept, num_classes)
    # confusion_matrix has rows = label (new class), columns = prediction (old class).
    pairs = seg_metrics.confusion_matrix(pred, kept, num_classes).T
    return per_frame, pairs


def clip_pair_counts(pred: jnp.ndarray, labels: jnp.ndarray, old: jnp.ndarray,
                     current: jnp.ndarray, frame_weights: jnp.ndarray, num_classes: int
                     ) -> jnp.ndarray:
    """Collision pixels per clip and (old, new) pair, int32 [N, K·K] at index o·K + n (the
    ``"video_pair"`` unit); arguments as ``collision_counts``."""
    kept = _colliding_labels(pred, labels, old, current, frame_weights, num_classes)
    per_clip = jax.vmap(lambda p, k: seg_metrics.confusion_matrix(p, k, num_classes).T)
    return per_clip(pred, kept).reshape(pred.shape[0], num_classes * num_classes)


@xla.jit(static_argnames=("problem", "num_classes", "with_clip_pairs"))
def _old_model_batch(problem, params, batch_stats, old, current, batch, *, num_classes,
                     with_clip_pairs):
    """One batch of the old-model pass: its prediction over the old classes, then the counts."""
    pred = problem.predict_with(params, batch_stats, old, batch)
    frame_weights = batch["label_mask"] * batch["frame_mask"] * batch["valid"][:, None]
    args = (pred, batch["labels"], old, current, frame_weights, num_classes)
    per_frame, pairs = collision_counts(*args)
    counts = {"per_frame": per_frame, "pairs": pairs}
    if with_clip_pairs:
        counts["clip_pairs"] = clip_pair_counts(*args)
    return counts


class Collisions(NamedTuple):
    """The old-model pass over a task's videos (``old_model_collisions``)."""

    ids: np.ndarray                 # int64 [N] record indices
    per_frame: np.ndarray           # int64 [N, T, K]
    pairs: np.ndarray               # int64 [K, K] (old, new) pixels over the task
    clip_pairs: np.ndarray | None   # int64 [N, K·K] per video (``"video_pair"`` unit) or None


def old_model_collisions(problem, params, batch_stats, old: np.ndarray, current: np.ndarray,
                         batches: Iterable[dict[str, np.ndarray]],
                         device_batch: Callable[[dict], dict[str, Any]],
                         with_clip_pairs: bool = False) -> Collisions:
    """Runs the frozen old model over the task's videos and counts collisions (jit'd per batch).

    Args:
      problem: the CAVS problem; ``params`` / ``batch_stats`` are the old model's (the teacher).
      old, current: bool [K] masks of the task.
      batches: padded eval batches over the task's training videos with the task's labels
        (``TaskContext.batches(indices, labels="current")``).
      device_batch: host batch -> device arrays (``TaskContext.device_batch``).
      with_clip_pairs: also count every video's (old, new) pairs (``clip_pair_counts``).
    """
    num_classes = int(np.asarray(old).shape[0])
    old, current = jnp.asarray(old), jnp.asarray(current)

    def counts(batch):
        return _old_model_batch(problem, params, batch_stats, old, current, device_batch(batch),
                                num_classes=num_classes, with_clip_pairs=with_clip_pairs)

    out = hostpass.collect(counts, batches, sums=("pairs",))
    clip_pairs = out["clip_pairs"].astype(np.int64) if with_clip_pairs else None
    return Collisions(out["ids"], out["per_frame"].astype(np.int64), out["pairs"], clip_pairs)


# -- statistics (host-side numpy) -----------------------------------------------------------

def counting_units(per_frame: np.ndarray, unit: str, clip_pairs: np.ndarray | None = None
                   ) -> np.ndarray:
    """Counts per counting unit: int64 [N, K] summed over frames (``"video"``),
    [N·T, K] one row per frame (``"frame"``), from ``per_frame`` [N, T, K]; or
    ``clip_pairs`` [N, K·K] per video and (old, new) pair (``"video_pair"``)."""
    _check(unit, COUNTING_UNITS, "collision_unit")
    if unit == "video_pair":
        if clip_pairs is None:
            raise ValueError("counting_units: unit 'video_pair' needs the per-video pair "
                             "counts (old_model_collisions(..., with_clip_pairs=True)).")
        return np.asarray(clip_pairs, np.int64)
    per_frame = np.asarray(per_frame, np.int64)
    if unit == "video":
        return per_frame.sum(axis=1)
    return per_frame.reshape(-1, per_frame.shape[-1])


def most_confusing(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eqs 6-7 for every unit: the most confusing old class and its share of the collisions.

    Args:
      counts: int [U, K] N_i(c) per unit (0 for background and non-old classes).

    Returns:
      (c_star int64 [U] = argmax_c N_i(c), the smallest class id on ties;
       ratio float64 [U] = N_i(c*) / Σ_c N_i(c), 0 where the unit has no collision;
       colliding bool [U] = Σ_c N_i(c) > 0).
    """
    counts = np.asarray(counts, np.int64)
    total = counts.sum(axis=-1)
    c_star = np.argmax(counts, axis=-1)
    peak = np.take_along_axis(counts, c_star[:, None], axis=-1)[:, 0]
    colliding = total > 0
    ratio = np.where(colliding, peak / np.maximum(total, 1), 0.0)
    return c_star, ratio, colliding


def significance_threshold(c_star: np.ndarray, ratio: np.ndarray, colliding: np.ndarray,
                           rule: str, num_old_classes: int, share: float = AUTHORS_SHARE
                           ) -> float:
    """r̄, the ratio a collision must exceed to be significant (DECISION, module doc).

    Args:
      c_star, ratio, colliding: from ``most_confusing``.
      rule: ``"mean"`` (A), ``"uniform"`` (B), ``"class_mean"`` (C) or ``"fixed"``.
      num_old_classes: |C_{1:t-1}|, the old foreground classes (rule B).
      share: r̄ of rule ``"fixed"``.

    Returns:
      r̄ (``inf`` when no unit collides under rules A and C: nothing is significant).
    """
    _check(rule, SIGNIFICANCE_RULES, "significance")
    if rule == "fixed":
        if not 0.0 <= share < 1.0:
            raise ValueError(f"config field strategy.significance_share={share} must be in "
                             f"[0, 1) (the authors' code uses {AUTHORS_SHARE}).")
        return float(share)
    if rule == "uniform":
        if num_old_classes < 1:
            raise ValueError("significance_threshold: rule 'uniform' needs at least one old "
                             "class.")
        return 1.0 / num_old_classes
    if not np.any(colliding):
        return float("inf")
    ratios, classes = np.asarray(ratio)[colliding], np.asarray(c_star)[colliding]
    if rule == "mean":
        return float(ratios.mean())
    return float(np.mean([ratios[classes == c].mean() for c in np.unique(classes)]))


def collision_frequency(c_star: np.ndarray, ratio: np.ndarray, colliding: np.ndarray,
                        threshold: float, classes: Sequence[int]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Eq 8: significant collisions per old class, then 0 -> 1.

    Args:
      c_star, ratio, colliding: from ``most_confusing``.
      threshold: r̄.
      classes: the old foreground classes C_{1:t-1}, in output order.

    Returns:
      (significant int64 [C]: Σ_i 1[c*_i = c ∧ r_i > r̄], the raw count;
       frequency float64 [C]: the same with zeros set to 1, "classes that do not exhibit
       collisions will be set to 1").
    """
    significant_units = np.asarray(colliding) & (np.asarray(ratio) > threshold)
    chosen = np.asarray(c_star)[significant_units]
    significant = np.array([np.sum(chosen == c) for c in classes], np.int64)
    return significant, np.where(significant == 0, 1, significant).astype(np.float64)


def replay_probabilities(frequency: np.ndarray, smoothing: str = "sigmoid") -> np.ndarray:
    """Eq 9: p_c = σ(g(f_c)) / Σ_c' σ(g(f_c')), float64 [C].

    ``smoothing="sigmoid"``: g(f) = f (the paper). ``"standardized"``: g(f) = (f - mean f) /
    std f, population std, g = 0 when std = 0 (our invention; module doc).
    """
    _check(smoothing, SMOOTHINGS, "smoothing")
    f = np.asarray(frequency, np.float64)
    if f.size == 0:
        raise ValueError("replay_probabilities: no old class to replay.")
    if smoothing == "standardized":
        std = f.std()
        f = (f - f.mean()) / std if std > 0 else np.zeros_like(f)
    smoothed = 1.0 / (1.0 + np.exp(-f))
    return smoothed / smoothed.sum()


def resample_count(memory_size: int, ratio: float) -> int:
    """n_R = round(ratio · |M|), rounding half up (spec §6.3 step 7)."""
    if not 0.0 <= ratio:
        raise ValueError(f"config field strategy.resample_ratio={ratio} must be >= 0.")
    return int(np.floor(ratio * memory_size + 0.5))


def resample(class_videos: Mapping[int, np.ndarray], classes: Sequence[int],
             probabilities: np.ndarray, count: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Draws the rehearsal set R: ``count`` times a class c ~ p, then a video of M_c uniformly.

    Args:
      class_videos: {c: record indices of the memory videos tagged c}.
      classes: the old foreground classes, aligned with ``probabilities``.
      probabilities: float [C] from ``replay_probabilities``.
      count: n_R.
      rng: seeded host generator (the draw is reproducible).

    Returns:
      (classes int64 [count] drawn classes, ids int64 [count] record indices drawn for them;
       with replacement, duplicates allowed).
    """
    probabilities = np.asarray(probabilities, np.float64)
    available = np.array([len(class_videos.get(int(c), ())) > 0 for c in classes])
    if count == 0:
        return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
    if not available.any():
        raise ValueError("resample: the memory holds no video of any old class; CSR needs "
                         "the memory built by MSS at the previous tasks.")
    p = np.where(available, probabilities, 0.0)
    drawn = rng.choice(np.asarray(classes, np.int64)[available], size=count,
                       p=p[available] / p[available].sum())
    ids = np.array([rng.choice(np.asarray(class_videos[int(c)])) for c in drawn], np.int64)
    return drawn.astype(np.int64), ids


@dataclasses.dataclass(frozen=True)
class CollisionStatistics:
    """CSR statistics of one task over the old foreground classes ``classes`` [C]."""

    classes: np.ndarray       # int64 [C] old foreground classes
    collisions: np.ndarray    # int64 [C] collision pixels predicted as each class
    significant: np.ndarray   # int64 [C] raw eq 8 counts
    frequency: np.ndarray     # float64 [C] f_c (zeros set to 1)
    probability: np.ndarray   # float64 [C] p_c (eq 9)
    threshold: float          # r̄
    colliding_units: int      # units with at least one collision


def collision_statistics(per_frame: np.ndarray, old: np.ndarray, unit: str = "video",
                         significance: str = "mean", smoothing: str = "sigmoid",
                         clip_pairs: np.ndarray | None = None,
                         share: float = AUTHORS_SHARE) -> CollisionStatistics:
    """Eqs 6-9 from the per-frame collision counts of the whole task.

    Args:
      per_frame: int [N, T, K] from ``collision_counts`` over the task's videos.
      old: bool [K] old classes (background included; background is dropped here).
      unit, significance, smoothing: the DECISIONS of the module doc.
      clip_pairs: int [N, K·K] from ``clip_pair_counts`` (unit ``"video_pair"`` only).
      share: r̄ of the ``"fixed"`` significance rule.
    """
    classes = np.flatnonzero(np.asarray(old, bool))
    classes = classes[classes != 0]
    counts = counting_units(per_frame, unit, clip_pairs)
    c_star, ratio, colliding = most_confusing(counts)
    if unit == "video_pair":
        c_star = c_star // np.asarray(old).shape[0]  # the dominant pair's old class
    threshold = significance_threshold(c_star, ratio, colliding, significance, len(classes),
                                       share)
    significant, frequency = collision_frequency(c_star, ratio, colliding, threshold, classes)
    collisions = np.asarray(per_frame, np.int64).sum(axis=(0, 1))[classes]
    return CollisionStatistics(
        classes=classes, collisions=collisions, significant=significant,
        frequency=frequency, probability=replay_probabilities(frequency, smoothing),
        threshold=threshold, colliding_units=int(colliding.sum()))


def top_pairs(pairs: np.ndarray, limit: int = 10) -> list[dict[str, int]]:
    """The ``limit`` largest (old, new) collision pairs, largest first (ties: smaller ids)."""
    pairs = np.asarray(pairs, np.int64)
    old, new = np.nonzero(pairs)
    order = np.lexsort((new, old, -pairs[old, new]))[:limit]
    return [{"old": int(old[i]), "new": int(new[i]), "pixels": int(pairs[old[i], new[i]])}
            for i in order]
