"""The one host pass: run a jit'd function over eval batches on every process and bring the
results to the host, in batch order, identical on every process.

Strategies run such passes between tasks (PLOP's entropy histogram, CSR's collisions, MSS's
scores, herding's features, EWC/MAS's gradients). Every process iterates the *whole* batches
(``TaskContext.batches``) and the function lays each on the mesh (``TaskContext.device_batch``
or ``TaskContext.forward``); its per-clip outputs are sharded over all devices, so
``parallel.to_host`` gathers them
(one mechanism for one or many processes), in the global clip order, which is the batch order:
a host-side choice made from them is the same on every process and for every process count.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np

from jax_cavs.core import parallel

Batch = dict[str, np.ndarray]


def collect(fn: Callable[[Batch], dict[str, Any]], batches: Iterable[Batch], *,
            sums: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """``fn(host batch) -> {name: (device) array}`` over ``batches``, gathered to the host.

    Outputs whose leading axis is the clip axis are concatenated over batches with the
    padding clips (``valid == 0``) dropped; the batches' record ``index`` (when they carry
    one) comes back as ``"ids"`` (int64). Outputs named in ``sums`` are summed over batches instead (integers in
    int64, floats in float64: no int32 overflow over a large task).

    Raises:
      ValueError: when ``batches`` is empty.
    """
    parts: dict[str, list[np.ndarray]] = {}
    totals: dict[str, np.ndarray] = {}
    for batch in batches:
        real = np.asarray(batch["valid"]) > 0
        out = parallel.to_host(fn(batch))
        if "index" in batch:
            parts.setdefault("ids", []).append(np.asarray(batch["index"], np.int64)[real])
        for name, value in out.items():
            value = np.asarray(value)
            if name in sums:
                wide = value.astype(np.int64 if value.dtype.kind in "iub" else np.float64)
                totals[name] = totals[name] + wide if name in totals else wide
            else:
                parts.setdefault(name, []).append(value[real])
    if not parts and not totals:
        raise ValueError("host pass over no batch: the task has no video to run it on.")
    return {**{name: np.concatenate(values) for name, values in parts.items()}, **totals}


def accumulate(fn: Callable[[Any, Batch], Any], init: Any, batches: Iterable[Batch]
               ) -> tuple[Any, int]:
    """``acc = fn(acc, host batch)`` over ``batches``, the accumulator kept on device (``fn``
    may donate it: one accumulator is alive at a time); returns (acc, number of batches).

    Raises:
      ValueError: when ``batches`` is empty.
    """
    acc, count = init, 0
    for batch in batches:
        acc = fn(acc, batch)
        count += 1
    if not count:
        raise ValueError("host pass over no batch: the task has no video to run it on.")
    return acc, count
