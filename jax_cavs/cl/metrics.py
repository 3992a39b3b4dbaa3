"""Continual-learning summaries of an accuracy matrix (spec_family §C4).

``R[i, j]`` is the score (mIoU, mAP, max-F...) on task j's test data after training task i,
0-indexed, T tasks. With the last row ``R[T-1]``:

* average accuracy  AA  = mean_j R[T-1, j]
* learning accuracy LA  = mean_j R[j, j]
* forgetting        F   = mean_{j<T-1} ( max_{l∈[j, T-2]} R[l, j] - R[T-1, j] )
  (Chaudhry et al.)
* backward transfer BWT = mean_{j<T-1} ( R[T-1, j] - R[j, j] )                    (GEM)
* forward transfer  FWT = mean_{j≥1} R[j-1, j]   (zero-shot score before learning task j,
  without GEM's random-init baseline, as ATLAS reports it; spec_family §C4 [inferred])

Only the entries these formulas read must be finite: the upper triangle beyond the first
super-diagonal may hold NaN (never evaluated).

DECISION, T = 1: forgetting, BWT and FWT are means over empty sets and are returned as NaN
("undefined"), not 0, so that they cannot be mistaken for perfect retention when results
are aggregated; AA = LA = R[0, 0].
"""

from __future__ import annotations

import numpy as np


def summarize(accuracy_matrix) -> dict[str, float]:
    """Summary metrics of a T x T accuracy matrix.

    Args:
      accuracy_matrix: array-like [T, T], ``R[i, j]`` = score on task j after task i.

    Returns:
      dict of Python floats: ``average_accuracy``, ``learning_accuracy``, ``forgetting``,
      ``bwt``, ``fwt``, and ``num_tasks`` (int).
    """
    r = np.asarray(accuracy_matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"summarize: the accuracy matrix must be square [T, T] with T >= 1, "
                         f"got shape {r.shape}.")
    num_tasks = r.shape[0]
    last = r[-1]
    summary = {"num_tasks": num_tasks,
               "average_accuracy": float(np.mean(last)),
               "learning_accuracy": float(np.mean(np.diag(r)))}
    if num_tasks == 1:
        summary.update(forgetting=float("nan"), bwt=float("nan"), fwt=float("nan"))
        return summary
    previous = range(num_tasks - 1)
    best_before_end = np.array([np.max(r[j:num_tasks - 1, j]) for j in previous])
    summary["forgetting"] = float(np.mean(best_before_end - last[:-1]))
    summary["bwt"] = float(np.mean(last[:-1] - np.diag(r)[:-1]))
    summary["fwt"] = float(np.mean([r[j - 1, j] for j in range(1, num_tasks)]))
    return summary
