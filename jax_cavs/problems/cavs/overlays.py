"""Qualitative examples for the CAVS report: one test frame per class group.

After task t: for the old classes (the first task's) and, from t = 1, the task's new classes,
the first test clip showing one of them, its frame with the most pixels of that group, the
ground truth and the prediction over the seen classes (``core.report`` draws them).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jax_cavs.data import transforms
from jax_cavs.problems.cavs.evaluator import NEG_INF


def overlay_examples(problem, forward: Callable, state, scenario, t: int,
                     batches: Callable) -> list[dict[str, Any]]:
    """``[{"frame", "label", "pred", "title"}]`` (``core.report`` module doc).

    ``forward(params, batch_stats, host batch) -> Outputs`` and ``batches(indices, classes)``
    (whole test batches on every process) come from the loop; every process takes part.
    """
    seen = scenario.seen_mask(t)
    groups = [("old", scenario.group_mask(0))]
    if t > 0:
        groups.append(("new", scenario.current_mask(t)))
    source = problem.dataset.sources["test"]
    size = problem.image_size
    examples = []
    for name, mask in groups:
        for index in scenario.test_indices:
            classes = problem.dataset.index["test"].classes[index]
            if not any(mask[c] for c in classes):
                continue
            batch = next(batches([index], seen))
            logits = np.asarray(forward(state.params, state.batch_stats, batch).logits)
            pred = np.argmax(np.where(seen, logits[0], NEG_INF), axis=-1)
            labels = np.asarray(batch["labels"][0])
            frame = int(np.argmax([(np.isin(l, np.flatnonzero(mask))).sum() for l in labels]))
            record = source[int(index)]
            image = np.asarray(record["frames"][frame])
            if image.shape[0] != size:
                image, _ = transforms.eval_resize(
                    image[None], np.asarray(record["labels"][frame])[None], size)
                image = image[0]
            examples.append({"frame": image, "label": labels[frame].astype(np.int32),
                             "pred": pred[frame].astype(np.int32),
                             "title": f"{name} classes: test clip {index}, frame {frame}"})
            break
    return examples
