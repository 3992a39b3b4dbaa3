"""AV-CIL's evaluator: top-1 accuracy over the test clips of the seen classes (spec_family §A7).

After task t, a_t is the top-1 accuracy, argmax over every seen class, on the test clips of
all seen classes; a_{t,i} is the same predictions restricted to the test clips of task i
(the accuracy matrix's row t). Clips of classes not seen yet take no part
[AVCIL-code ours/train_incremental_ours.py ``detailed_test`` l. 244-283].

The run summary adds the paper's two numbers (``summary``):

* mean accuracy (eq 15) = (1/T) Σ_t a_t, the first task included;
* average forgetting (eq 16, the code's running max): best_i = max_{τ∈[i, t-1]} a_{τ,i},
  F_t = mean_{i<t}(best_i − a_{t,i}), Ave. Forget. = mean_{t≥1} F_t (undefined with one task).

``logits_key`` selects what is scored: ``"logits"`` (the classifier; iCaRL-FC, AFC-LSC) or a
feature of ``Outputs.features`` holding class scores (e.g. ``"nme_logits"`` for the nearest
mean of exemplars).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e9


class ClassificationEvaluator:
    """Per-class (correct, total) counts over the test clips of the seen classes."""

    headline = "acc"

    def __init__(self, num_classes: int, logits_key: str = "logits"):
        self.num_classes = num_classes
        self.logits_key = logits_key

    def init(self) -> jnp.ndarray:
        return jnp.zeros((self.num_classes, 2), jnp.int32)

    def scores(self, outputs) -> jnp.ndarray:
        return (outputs.logits if self.logits_key == "logits"
                else outputs.features[self.logits_key])

    def update(self, stats, outputs, batch, seen) -> jnp.ndarray:
        pred = jnp.argmax(jnp.where(seen, self.scores(outputs), NEG_INF), axis=-1)
        counted = (batch["valid"] > 0) & seen[batch["label"]]
        one_hot = jax.nn.one_hot(batch["label"], self.num_classes, dtype=jnp.int32)
        one_hot = one_hot * counted[:, None].astype(jnp.int32)
        hits = (pred == batch["label"]).astype(jnp.int32)
        return stats + jnp.stack([one_hot.T @ hits, one_hot.sum(0)], axis=-1)

    def finalize(self, stats, scenario, seen) -> dict[str, Any]:
        counts = np.asarray(stats)
        seen = np.asarray(seen)

        def accuracy(mask: np.ndarray) -> float | None:
            total = int(counts[mask, 1].sum())
            return float(counts[mask, 0].sum() / total) if total and seen[mask].all() else None

        groups = [accuracy(scenario.group_mask(j)) for j in range(len(scenario.report_groups))]
        return {"groups": groups,
                "record": {"acc": {"old": accuracy(seen & ~current_of(scenario, seen)),
                                   "new": accuracy(current_of(scenario, seen)),
                                   "all": accuracy(seen)},
                           "task_acc": groups}}

    @staticmethod
    def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return mean_accuracy_and_forgetting([r["task_acc"] for r in records],
                                            [r["acc"]["all"] for r in records])


def current_of(scenario, seen: np.ndarray) -> np.ndarray:
    """bool [K]: the classes of the last task whose classes are all in ``seen``."""
    learned = [t for t in range(scenario.num_tasks) if seen[list(scenario.tasks[t].classes)].all()]
    return scenario.current_mask(learned[-1]) if learned else np.zeros_like(seen)


def mean_accuracy_and_forgetting(task_acc: Sequence[Sequence[float | None]],
                                 all_acc: Sequence[float | None]) -> dict[str, float]:
    """Eq 15 and eq 16 (module docstring) from the rows a_{t,·} and a_t of the tasks so far."""
    summary = {}
    if all(a is not None for a in all_acc):
        summary["mean_accuracy"] = float(np.mean(all_acc))
    best, forgetting = [], []
    for t, row in enumerate(task_acc):
        if t > 0:
            forgetting.append(float(np.mean([b - row[i] for i, b in enumerate(best)])))
            best = [max(b, row[i]) for i, b in enumerate(best)]
        best.append(row[t])
    if forgetting:
        summary["average_forgetting"] = float(np.mean(forgetting))
    return summary
