"""Which videos of a task enter the replay memory: a fixed budget per new class.

After task t, for every class c learned in t, up to ``per_class`` training videos of the task
whose (current-task) ground truth contains c are stored (``ReplayMemory.add``; a video picked
for several classes is stored once with all the tags). Two rules:

* ``random``: a uniform draw without replacement from the class's videos, seeded by the
  caller's ``np.random.Generator`` (the task context's, derived from the config seed and the
  task, so a resumed run draws the same videos).
* ``herding``: iCaRL's herding (Rebuffi et al. 2017, Alg. 4), as FACIL codes it
  [mmasana/FACIL src/datasets/exemplars_selection.py HerdingExemplarsSelector]: features are
  L2-normalised, μ is their mean, and the k-th pick is the video minimising
  ‖μ − (φ + Σ_{j<k} φ_{p_j}) / k‖, so the running mean of the picks tracks the class mean.

The per-clip class membership and features come from the problem
(``Problem.class_statistics``; CAVS: ``problems/cavs/class_features.py``), in one jit'd
eval-mode pass (``class_statistics``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np

from jax_cavs.core import hostpass, steps, xla

SELECTIONS = ("random", "herding")
# Herding's argmin treats distances within this of the minimum as tied and takes the earliest
# row (record order): runs on other process counts compute the features from weights that
# differ in the last float32 bits (other reduction orders), and must still pick the same
# videos (DECISION; FACIL's argmin is exact). Normalised features: distances are O(1).
HERDING_TIE_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class ClipStatistics:
    """Per-video class statistics of one task's training videos (host arrays).

    Attributes:
      ids: int64 [n] record indices, in the order of the task's training indices.
      pixels: float32 [n, K] the problem's class presence (CAVS: annotated pixels of each
        class; membership: > 0).
      features: float32 [n, K, C] mean feature of each class's pixels (0 where absent), or
        None when only membership was computed.
    """

    ids: np.ndarray
    pixels: np.ndarray
    features: np.ndarray | None = None

    def members(self, c: int) -> np.ndarray:
        """Row numbers of the videos containing class ``c``."""
        return np.flatnonzero(self.pixels[:, c] > 0)


@functools.lru_cache(maxsize=None)
def _statistics_fn(problem, with_features: bool):
    """jit'd ``(params, batch_stats, batch) -> dict`` of per-clip statistics."""

    def statistics(params, batch_stats, batch):
        outputs = None
        if with_features:
            outputs, _ = problem.apply(steps.variables(params, batch_stats), batch, train=False)
        return problem.class_statistics(outputs, batch)

    return xla.jit(statistics)


def class_statistics(ctx, state, *, with_features: bool) -> ClipStatistics:
    """One eval-mode pass over the task's training videos (``ctx.batches``, current labels).

    Results come to every host in batch order (``core.hostpass``), so all processes select
    the same videos. Padding clips are dropped.
    """
    fn = _statistics_fn(ctx.problem, with_features)
    merged = hostpass.collect(
        lambda batch: fn(state.params, state.batch_stats, ctx.device_batch(batch)),
        ctx.batches(ctx.train_indices, labels="current"))
    features = None
    if with_features:
        weights = merged["feature_weights"][..., None]
        features = np.where(weights > 0, merged["feature_sums"]
                            / np.where(weights > 0, weights, 1.0), 0.0).astype(np.float32)
    return ClipStatistics(ids=merged["ids"], pixels=merged["presence"].astype(np.float32),
                          features=features)


# ----------------------------------------------------------------------------------------
# Host-side selection rules.


def random_selection(stats: ClipStatistics, classes: Sequence[int], per_class: int,
                     rng: np.random.Generator) -> dict[int, np.ndarray]:
    """{class: record ids}, up to ``per_class`` videos of each class drawn uniformly."""
    chosen = {}
    for c in classes:
        rows = stats.members(c)
        chosen[c] = stats.ids[rng.choice(rows, size=min(per_class, rows.size), replace=False)]
    return chosen


def herding_order(features: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` herding picks (row indices) of features [n, C] (iCaRL, FACIL).

    Features are L2-normalised; μ = their mean; pick k minimises ‖μ − (φ + S_{k−1}) / k‖ over
    the rows not picked yet, S_{k−1} the sum of the previous picks' features; rows within
    ``HERDING_TIE_TOLERANCE`` of the minimum are tied, the earliest wins.
    """
    features = np.asarray(features, np.float64)
    if features.shape[0] == 0:
        return np.zeros((0,), np.int64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    features = features / np.where(norms > 0, norms, 1.0)
    mean = features.mean(axis=0)
    picked: list[int] = []
    running_sum = np.zeros_like(mean)
    available = np.ones(features.shape[0], bool)
    for k in range(1, min(count, features.shape[0]) + 1):
        distances = np.linalg.norm(mean - (features + running_sum) / k, axis=1)
        distances[~available] = np.inf
        best = int(np.argmax(distances <= distances.min() + HERDING_TIE_TOLERANCE))
        picked.append(best)
        available[best] = False
        running_sum += features[best]
    return np.asarray(picked, np.int64)


def herding_selection(stats: ClipStatistics, classes: Sequence[int], per_class: int
                      ) -> dict[int, np.ndarray]:
    """{class: record ids}, each class's first ``per_class`` herding picks, in pick order."""
    if stats.features is None:
        raise ValueError("herding needs per-class features (class_statistics(with_features=True)).")
    chosen = {}
    for c in classes:
        rows = stats.members(c)
        chosen[c] = stats.ids[rows[herding_order(stats.features[rows, c], per_class)]]
    return chosen


def select(rule: str, stats: ClipStatistics, classes: Sequence[int], per_class: int,
           rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Dispatches to ``random_selection`` or ``herding_selection``."""
    if rule == "random":
        return random_selection(stats, classes, per_class, rng)
    if rule == "herding":
        return herding_selection(stats, classes, per_class)
    raise ValueError(f"selection rule {rule!r} is not one of {SELECTIONS}.")


def flatten(chosen: Mapping[int, np.ndarray]) -> tuple[list[int], list[int]]:
    """(ids, classes) lists for ``ReplayMemory.add`` from {class: ids}."""
    ids = [int(i) for c in sorted(chosen) for i in chosen[c]]
    classes = [int(c) for c in sorted(chosen) for _ in chosen[c]]
    return ids, classes
