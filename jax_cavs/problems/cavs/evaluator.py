"""CAVS's evaluator: one pixel confusion matrix over the whole test set (MiB/PLOP, CMR).

``update`` (jit'd by the core) adds a batch's confusion over the seen classes' argmax, padded
clips and unannotated frames weighted out; ``finalize`` turns the matrix into per-class IoU,
the accuracy-matrix row (the mIoU of every report group) and the CMR tables' columns
(spec_cavs §1.3): ``old`` = background + the first task's classes, ``new`` = every class
learned after it, ``all`` = every seen class. Means run over the classes present in the
ground truth; a group with none present is undefined (``None``), never 0. With
``absent="zero"`` (``config.eval.absent_classes``) absent classes count 0 in the means, as in
the CMR authors' code (``metrics.group_miou``); per-class IoU stays ``None`` for them.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jax_cavs.problems.cavs import metrics as seg_metrics

NEG_INF = -1e9


def mask_unseen(logits: jnp.ndarray, seen: jnp.ndarray) -> jnp.ndarray:
    """Logits of classes not yet seen pushed to -1e9 (static shapes: heads are unmasked)."""
    return jnp.where(seen, logits, NEG_INF)


class SegmentationEvaluator:
    """Confusion-matrix evaluator over ``num_classes`` classes (module doc)."""

    headline = "miou"

    def __init__(self, num_classes: int, absent: str = "exclude"):
        if absent not in seg_metrics.ABSENT_CLASSES:
            raise ValueError(f"eval.absent_classes: {absent!r} is not one of "
                             f"{seg_metrics.ABSENT_CLASSES}.")
        self.num_classes, self.absent = num_classes, absent

    def init(self) -> jnp.ndarray:
        return jnp.zeros((self.num_classes, self.num_classes), jnp.int32)

    def update(self, stats, outputs, batch, seen) -> jnp.ndarray:
        pred = jnp.argmax(mask_unseen(outputs.logits, seen), axis=-1)
        weights = jnp.broadcast_to(
            (batch["label_mask"] * batch["valid"][:, None])[..., None, None], pred.shape)
        return stats + seg_metrics.confusion_matrix(pred, batch["labels"], self.num_classes,
                                                    weights=weights)

    def finalize(self, stats, scenario, seen) -> dict[str, Any]:
        confusion = np.asarray(stats)
        _, per_class = seg_metrics.miou(confusion)

        def score(mask: np.ndarray) -> float | None:
            value = float(seg_metrics.group_miou(per_class, confusion, mask, self.absent))
            return None if np.isnan(value) else value

        first = scenario.group_mask(0)
        return {"groups": [score(scenario.group_mask(j))
                           for j in range(len(scenario.report_groups))],
                "record": {"miou": {"old": score(first), "new": score(seen & ~first),
                                    "all": score(seen)},
                           "per_class_iou": [None if np.isnan(v) else float(v)
                                             for v in np.asarray(per_class)]}}

    @staticmethod
    def summary(records) -> dict[str, Any]:
        """CAVS reports the accuracy matrix's summary only (``core.accuracy``)."""
        return {}
