"""The accuracy matrix's continual-learning summary (spec_family §C4), built by the loop.

``R[i, j]`` is the score (mIoU, mAP, max-F...) on task j's test data after training task i,
0-indexed, T tasks. An entry may be *undefined* (``None`` or NaN): CAVS evaluates after task i
only the classes seen so far, so ``R[i, j]`` for j > i has no ground truth (its score is
``None``), and a group whose classes are absent from a test set has no score either. An
undefined entry is excluded from every mean below; a summary none of whose terms is defined is
omitted from the result (never written as 0, which would read as "no transfer" or "perfect
retention"). With the last row ``R[T-1]`` and means over the defined terms only:

* average accuracy  AA  = mean_j R[T-1, j]
* learning accuracy LA  = mean_j R[j, j]
* forgetting        F   = mean_{j<T-1} ( max_{l∈[0, T-2]} R[l, j] - R[T-1, j] )
  (Chaudhry et al. 2018; spec_family §C4 ``max_{l∈{1..T−1}}``, 1-indexed). The max runs over
  every earlier row, including rows l < j (zero-shot scores) where the problem defines them
  (ATLAS evaluates task t+1 after task t). Where those entries are undefined (CAVS; AV-CIL,
  whose code starts ``best_i`` at ``a_{i,i}``, spec_family §A7) this is the max over
  l ∈ [j, T-2].
* backward transfer BWT = mean_{j<T-1} ( R[T-1, j] - R[j, j] )                    (GEM)
* forward transfer  FWT = mean_{j≥1} R[j-1, j]   (zero-shot score before learning task j,
  without GEM's random-init baseline, as ATLAS reports it; spec_family §C4 [inferred]).
  Reported only where some R[j-1, j] is defined, so never for CAVS.

T = 1: forgetting, BWT and FWT are means over empty sets and are omitted; AA = LA = R[0, 0].
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _as_matrix(accuracy_matrix) -> np.ndarray:
    """float64 [T, T], ``None`` -> NaN."""
    entries = np.asarray(accuracy_matrix, dtype=object)
    if entries.ndim != 2 or entries.shape[0] != entries.shape[1] or entries.shape[0] == 0:
        raise ValueError(f"summarize: the accuracy matrix must be square [T, T] with T >= 1, "
                         f"got shape {entries.shape}.")
    return np.where(entries == None, np.nan, entries).astype(np.float64)  # noqa: E711


def _mean_of_defined(values: Iterable[float]) -> float | None:
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else None


def summarize(accuracy_matrix) -> dict[str, float]:
    """Summary metrics of a T x T accuracy matrix whose undefined entries are None or NaN.

    Args:
      accuracy_matrix: nested sequence or array [T, T], ``R[i, j]`` = score on task j after
        task i; ``None``/NaN = undefined.

    Returns:
      dict: ``num_tasks`` (int) and those of ``average_accuracy``, ``learning_accuracy``,
      ``forgetting``, ``bwt``, ``fwt`` (Python floats) with at least one defined term.
    """
    r = _as_matrix(accuracy_matrix)
    num_tasks = r.shape[0]
    last = r[-1]
    previous = range(num_tasks - 1)

    def best_before_end(j: int) -> float:
        earlier = r[:num_tasks - 1, j]
        return np.nan if np.isnan(earlier).all() else float(np.nanmax(earlier))

    means = {
        "average_accuracy": _mean_of_defined(last),
        "learning_accuracy": _mean_of_defined(np.diag(r)),
        "forgetting": _mean_of_defined(best_before_end(j) - last[j] for j in previous),
        "bwt": _mean_of_defined(last[j] - r[j, j] for j in previous),
        "fwt": _mean_of_defined(r[j - 1, j] for j in range(1, num_tasks))}
    return {"num_tasks": num_tasks, **{k: v for k, v in means.items() if v is not None}}


def metrics_document(method: str, problem: str, headline: str, scenario: dict, tasks: list,
                     matrix: Sequence[Sequence[float | None]],
                     problem_summary: dict | None = None, latest: dict | None = None) -> dict:
    """``metrics.json``: the run's description, one record per finished task, the accuracy
    matrix (undefined entries ``null``) and, once it is square, its ``summarize`` followed by
    the problem's own summary entries (``Evaluator.summary``); ``latest``: entries of the
    latest task shown at the top level too (the problem's probes, ``Problem.probe_scores``)."""
    matrix = [list(row) for row in matrix]
    document = {"method": method, "problem": problem, "headline": headline,
                "scenario": scenario, "tasks": tasks, "accuracy_matrix": matrix,
                **(latest or {})}
    if matrix and len(matrix) == len(matrix[0]):
        document["summary"] = {**summarize(np.asarray(matrix)), **(problem_summary or {})}
    return document
