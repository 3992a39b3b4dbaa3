"""MSS, Multi-modal Sample Selection (CMR eqs 1-5; spec_cavs §6.2).

After training task t, two models segment every training video of the task: the audio-visual
learner f^av_t and its visual-only twin f^v_t (the same network fed silent audio, trained on the
same data; spec §6.1 DECISION). For video i and model m the score is its per-video mIoU (eqs
3-4)

    s^m_i = (1 / |T_i|) Σ_{t ∈ T_i} mIoU(argmax f^m(frame t), Y_t)

over the annotated frames T_i, with Y_t the task's labels (new classes, everything else
background). The audio contribution deviation (eq 5) is Δ_i = s^av_i − s^v_i, the two-modality
Shapley-style marginal contribution of audio given vision. For every new class c, the k
training videos of c (k = 5 by default) with the smallest |Δ_i| enter the replay memory: their
segmentation does not hinge on the audio, so they carry little multi-modal semantic drift
(paper Fig. 4a, A.5.6).

Selection rules (``rule``; the ablation of paper Table 3, spec §6.2 [inferred]):
``"mss"`` smallest |Δ|, ``"smallest"`` smallest signed Δ, ``"largest"`` largest signed Δ,
``"random"`` k videos uniformly without replacement (seeded). Ties are broken by record index.
A video picked for several classes is stored once and tagged with all of them (spec §6.2).

DECISIONS (config fields of ``strategies.cmr.CMR``):

* ``convention`` of the per-frame mIoU (``metrics.segmentation.per_frame_miou``): ``"union"``
  (default; mean IoU over the classes with nonzero union, background included) or
  ``"avsbench"`` (AVSBench's ``Σ IoU / #{IoU > 0}``). Frames whose mIoU is undefined (NaN:
  no valid pixel, or no intersecting class under ``"avsbench"``) are skipped; a video without
  any scored frame scores 0. ``"sum"`` is the authors' code (``avss/shapely_conrtibution.py:
  127-129`` with ``avss/utils/compute_color_metrics.py:215-242``): s^m_i = Σ_t Σ_c IoU_{t,c},
  a sum over the frames and every class (0 where a class is in neither prediction nor
  label), not a mean; with ``classes = "seen"`` it is their score. Unlike their code it skips
  unannotated and padded frames and the predictions on ignored (255) pixels.
* ``classes``, the classes the argmax runs over (bool [K] built by the strategy): by default
  background plus the task's new classes, i.e. exactly the classes of Y_t (spec §6.2 leaves it
  open). Scoring over every seen class would also count an old-class prediction on an old
  object, which Y_t labels background, as an error of the model that remembers it better;
  that confound would push the selection away from videos that hold old objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax.numpy as jnp
import numpy as np

from jax_cavs.core import hostpass, xla
from jax_cavs.core.memory import ReplayMemory
from jax_cavs.problems.cavs import metrics as seg_metrics

SELECTION_RULES = ("mss", "smallest", "largest", "random")
SCORE_CONVENTIONS = (*seg_metrics.PER_FRAME_CONVENTIONS, "sum")


# -- scoring (jit-able) ----------------------------------------------------------------------

def video_scores(pred: jnp.ndarray, labels: jnp.ndarray, frame_weights: jnp.ndarray,
                 num_classes: int, convention: str = "union") -> jnp.ndarray:
    """Eqs 3-4: per-video mean of the per-frame mIoU over the annotated frames (``"sum"``:
    the sum of every class's IoU over them).

    Args:
      pred, labels: int [N, T, H, W] (labels: 255 ignored).
      frame_weights: float/bool [N, T]; frames with 0 (unannotated, padded) are skipped.
      num_classes: K (static).
      convention: ``"union"``, ``"avsbench"`` or ``"sum"`` (module doc).

    Returns:
      float32 [N]; 0 for a video without any scored frame.
    """
    annotated = jnp.asarray(frame_weights) != 0
    if convention == "sum":
        iou, _, _ = seg_metrics.avsbench_frame_scores(
            *seg_metrics.class_areas(pred, labels, num_classes))
        return jnp.sum(jnp.where(annotated, iou.sum(axis=-1), 0.0), axis=-1)
    per_frame = seg_metrics.per_frame_miou(pred, labels, num_classes, convention)
    scored = annotated & ~jnp.isnan(per_frame)
    total = jnp.sum(jnp.where(scored, per_frame, 0.0), axis=-1)
    count = jnp.sum(scored, axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def class_presence(labels: jnp.ndarray, frame_weights: jnp.ndarray, num_classes: int
                   ) -> jnp.ndarray:
    """bool [N, K]: the classes present in each video's labels over the weighted frames
    (D_t^c = the videos with ``presence[:, c]``)."""
    _, _, label_area = seg_metrics.class_areas(labels, labels, num_classes)
    weights = (jnp.asarray(frame_weights) != 0)[..., None]
    return jnp.sum(jnp.where(weights, label_area, 0), axis=1) > 0


@xla.jit(static_argnames=("problem", "num_classes", "convention"))
def _score_batch(problem, av_params, av_batch_stats, v_params, v_batch_stats, classes, batch, *,
                 num_classes, convention):
    """One batch of the MSS pass: both models' predictions over ``classes``, then the scores."""
    frame_weights = batch["label_mask"] * batch["frame_mask"] * batch["valid"][:, None]
    av = problem.predict_with(av_params, av_batch_stats, classes, batch)
    v = problem.predict_with(v_params, v_batch_stats, classes, batch, drop=frozenset({"audio"}))
    labels = batch["labels"]
    return (video_scores(av, labels, frame_weights, num_classes, convention),
            video_scores(v, labels, frame_weights, num_classes, convention),
            class_presence(labels, frame_weights, num_classes))


@dataclasses.dataclass(frozen=True)
class VideoScores:
    """MSS scores of the task's videos: record ``ids`` int64 [N], ``av`` and ``v`` float64 [N]
    (eqs 3-4) and ``presence`` bool [N, K] (classes in each video's labels)."""

    ids: np.ndarray
    av: np.ndarray
    v: np.ndarray
    presence: np.ndarray

    @property
    def deviation(self) -> np.ndarray:
        """Eq 5: Δ = s^av − s^v, float64 [N]."""
        return self.av - self.v

    def record(self, position: int) -> dict[str, float | int]:
        """JSON record of one video: id, both scores and the deviation."""
        return {"id": int(self.ids[position]), "av": float(self.av[position]),
                "v": float(self.v[position]), "deviation": float(self.deviation[position])}


def score_videos(problem, av_variables: tuple[Any, Any], v_variables: tuple[Any, Any],
                 classes: np.ndarray, batches: Iterable[dict[str, np.ndarray]],
                 device_batch: Callable[[dict], dict[str, Any]], convention: str = "union"
                 ) -> VideoScores:
    """The MSS pass: scores every video of ``batches`` under both models (jit'd per batch).

    Args:
      problem: the CAVS problem (``problem.CAVSProblem``).
      av_variables: (params, batch_stats) of the audio-visual learner.
      v_variables: (params, batch_stats) of the visual-only twin (run with silent audio).
      classes: bool [K] classes the argmax runs over (module doc).
      batches: padded eval batches over the task's training videos with the task's labels
        (``TaskContext.batches(indices, labels="current")``).
      device_batch: host batch -> device arrays.
      convention: per-frame mIoU convention.
    """
    if convention not in SCORE_CONVENTIONS:
        raise ValueError(f"config field strategy.score_convention={convention!r} is not one "
                         f"of {SCORE_CONVENTIONS}.")
    classes = jnp.asarray(classes)
    num_classes = int(classes.shape[0])

    def scores(batch):
        return dict(zip(("av", "v", "presence"), _score_batch(
            problem, *av_variables, *v_variables, classes, device_batch(batch),
            num_classes=num_classes, convention=convention)))

    merged = hostpass.collect(scores, batches)
    return VideoScores(ids=merged["ids"].astype(np.int64), av=merged["av"].astype(np.float64),
                       v=merged["v"].astype(np.float64), presence=merged["presence"])


# -- selection (host-side numpy) ------------------------------------------------------------

SCORE_DECIMALS = 6


def rank(scores: VideoScores, candidates: np.ndarray, rule: str) -> np.ndarray:
    """``candidates`` (positions into ``scores``) ordered by ``rule``, best first; ties by id.

    ``"mss"``: |Δ| ascending; ``"smallest"``: Δ ascending; ``"largest"``: Δ descending. Δ is
    rounded to ``SCORE_DECIMALS`` first: a run on another process count computes the float32
    scores in another reduction order, and must rank the videos alike (DECISION).
    """
    deviation = np.round(scores.deviation[candidates], SCORE_DECIMALS)
    key = {"mss": np.abs(deviation), "smallest": deviation, "largest": -deviation}[rule]
    return candidates[np.lexsort((scores.ids[candidates], key))]


def select(rule: str, scores: VideoScores, classes: Iterable[int], per_class: int,
           rng: np.random.Generator | None = None) -> dict[int, np.ndarray]:
    """For every class c: positions of the (at most) ``per_class`` videos of D_t^c chosen by
    ``rule`` (the argument order of ``cl.selection.select``, whose rules return record ids).

    Args:
      rule: one of ``SELECTION_RULES``.
      scores: the task's ``VideoScores``.
      classes: the task's new classes, processed in ascending order (the random draws too).
      per_class: k, videos per class (fewer when D_t^c is smaller).
      rng: seeded host generator (used by ``"random"`` only).

    Returns:
      {c: int64 positions into ``scores``, in selection order}.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"config field strategy.selection={rule!r} is not one of "
                         f"{SELECTION_RULES}.")
    if per_class < 1:
        raise ValueError(f"config field strategy.memory_per_class={per_class} must be >= 1.")
    chosen = {}
    for c in sorted(int(c) for c in classes):
        candidates = np.flatnonzero(scores.presence[:, c])
        candidates = candidates[np.argsort(scores.ids[candidates], kind="stable")]
        if rule == "random":
            chosen[c] = rng.choice(candidates, size=min(per_class, candidates.size), replace=False)
        else:
            chosen[c] = rank(scores, candidates, rule)[:per_class]
        chosen[c] = np.asarray(chosen[c], np.int64)
    return chosen


def add_to_memory(memory: ReplayMemory, scores: VideoScores,
                  selection: dict[int, np.ndarray]) -> ReplayMemory:
    """Stores the selected videos; a video chosen for several classes is stored once and
    tagged with all of them. Slot scores are (s^av, s^v, Δ)."""
    positions = [p for c in sorted(selection) for p in selection[c]]
    classes = [c for c in sorted(selection) for _ in selection[c]]
    if not positions:
        return memory
    positions = np.asarray(positions, np.int64)
    values = np.stack([scores.av, scores.v, scores.deviation], axis=1)[positions]
    return memory.add(scores.ids[positions].tolist(), classes, values)


def selection_record(task: int, scores: VideoScores, selection: dict[int, np.ndarray],
                     **settings: Any) -> dict[str, Any]:
    """``DIR/memory/task_<t>.json``: per class the selected videos and every scored video of
    the class (id, s^av, s^v, Δ), plus the ``settings`` used (rule, k, convention...)."""
    classes = {}
    for c, positions in sorted(selection.items()):
        candidates = np.flatnonzero(scores.presence[:, c])
        candidates = candidates[np.argsort(scores.ids[candidates], kind="stable")]
        classes[str(c)] = {"selected": [scores.record(p) for p in positions],
                           "scored": [scores.record(p) for p in candidates]}
    return {"task": int(task), **settings, "classes": classes}
