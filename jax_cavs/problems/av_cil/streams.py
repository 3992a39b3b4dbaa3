"""grain streams of feature clips: AV-CIL's current + exemplar batches, and evaluation batches.

AV-CIL trains every step on a batch of the current task's clips concatenated with a batch of
exemplar clips [AVCIL-code ours/train_incremental_ours.py l. 76-82, 107]: the current loader
(batch B_c = min(``batch_size``, n_cur), shuffled, ``drop_last``) defines the epoch,
n_cur // B_c steps; the exemplar loader (B_e = min(``exemplar_batch_size``, |M|), shuffled,
``drop_last``) is ``itertools.cycle``d beside it, and ``cycle`` replays the batches of its
first pass, so within an epoch the exemplar batches repeat in one order; every epoch
reshuffles both. Batches here have the static shape ``batch_size + exemplar_batch_size``:
the rows a smaller B_c or B_e leaves empty are padding with ``valid`` = 0, so the losses see
exactly the code's batch and no shape changes between tasks. ``exemplar_batch_size = 0``
shuffles replayed clips in with the task's (one loader: the code's upper bound, fine-tuning).

Each row: ``audio`` float32 [D_a], ``visual`` float32 [N_tok, D_v], ``label`` int32 (the
global class id), ``is_memory`` float32, ``valid`` float32, ``index`` int64. The shuffles
are functions of (seed, epoch), and the iterator is a grain ``DatasetIterator``: its
``get_state``/``set_state`` resume a stream exactly. Process ``p`` of P loads rows
``p::P`` of the current and of the exemplar part (row order does not matter to the losses).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import grain
import numpy as np


def _fields(source, index: int, is_memory: bool, valid: float) -> dict[str, Any]:
    clip = source[index]
    return {"audio": clip["audio"], "visual": clip["visual"],
            "label": np.int32(clip["label"]), "index": np.int64(index),
            "is_memory": np.float32(is_memory), "valid": np.float32(valid)}


def _stack(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _padded(ids: np.ndarray, size: int) -> list[tuple[int, float]]:
    """``size`` (record, valid) pairs: ``ids`` then copies of the first marked invalid."""
    filler = int(ids[0]) if len(ids) else 0
    return [(int(i), 1.0) for i in ids] + [(filler, 0.0)] * (size - len(ids))


class Plan:
    """Which records form global step ``i``'s batch (pure function of the seed and ``i``)."""

    def __init__(self, current: Sequence[int], memory: Sequence[int], batch_size: int,
                 exemplar_batch_size: int, seed: int):
        self.current = np.asarray(current, np.int64)
        self.memory = np.asarray(memory, np.int64)
        if exemplar_batch_size == 0:  # one loader over both
            self.current, self.memory = np.concatenate([self.current, self.memory]), self.memory[:0]
        self.batch_size, self.exemplar_batch_size, self.seed = (batch_size, exemplar_batch_size,
                                                                seed)
        self.b_c = min(batch_size, len(self.current))
        self.b_e = min(exemplar_batch_size, len(self.memory))
        self.epoch_steps = max(len(self.current) // max(self.b_c, 1), 1)
        self._orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def orders(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's (current, memory) shuffles; grain maps from several threads, so the
        cache is only ever filled with complete entries."""
        order = self._orders.get(epoch)
        if order is None:
            rng = np.random.default_rng([self.seed, epoch])
            order = (rng.permutation(self.current), rng.permutation(self.memory))
            self._orders = {epoch: order, **{e: o for e, o in self._orders.items()
                                             if e >= epoch - 1}}
        return order

    def rows(self, step: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """(current rows, exemplar rows) of global step ``step``, padded to the static sizes."""
        epoch, j = divmod(step, self.epoch_steps)
        current, memory = self.orders(epoch)
        cur = current[j * self.b_c:(j + 1) * self.b_c]
        ex = memory[:0]
        if self.b_e:
            k = j % (len(memory) // self.b_e)  # cycle over the epoch's first pass
            ex = memory[k * self.b_e:(k + 1) * self.b_e]
        return _padded(cur, self.batch_size), _padded(ex, self.exemplar_batch_size)


class _LoadStep(grain.transforms.Map):
    def __init__(self, source, plan: Plan, shard_index: int, shard_count: int):
        self._source, self._plan = source, plan
        self._shard = (shard_index, shard_count)

    def map(self, step: int) -> dict[str, np.ndarray]:
        p, count = self._shard
        current, exemplar = self._plan.rows(int(step))
        rows = ([_fields(self._source, i, False, v) for i, v in current[p::count]]
                + [_fields(self._source, i, True, v) for i, v in exemplar[p::count]])
        return _stack(rows)


def _iterate(dataset: grain.MapDataset, worker_count: int) -> grain.DatasetIterator:
    iter_dataset = dataset.to_iter_dataset()
    if worker_count > 0:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(iter_dataset)


def split_items(items: Sequence[tuple[int, bool, float]]) -> tuple[list[int], list[int]]:
    """(current records, replayed records) of the loop's items."""
    return ([int(i) for i, m, _ in items if not m], [int(i) for i, m, _ in items if m])


def train_iterator(source, items, *, batch_size: int, exemplar_batch_size: int,
                   num_epochs: int, seed: int, worker_count: int = 0, shard_index: int = 0,
                   shard_count: int = 1) -> grain.DatasetIterator:
    """``num_epochs`` epochs of current + exemplar batches (module docstring)."""
    for field, size in (("batch_size", batch_size), ("exemplar_batch_size", exemplar_batch_size)):
        if size % shard_count:
            raise ValueError(f"config field {field}={size} must be divisible by the number "
                             f"of processes ({shard_count}).")
    plan = Plan(*split_items(items), batch_size, exemplar_batch_size, seed)
    dataset = grain.MapDataset.range(num_epochs * plan.epoch_steps).map(
        _LoadStep(source, plan, shard_index, shard_count))
    return _iterate(dataset, worker_count)


def eval_batches(source, indices: Sequence[int], *, batch_size: int, worker_count: int = 0,
                 shard_index: int = 0, shard_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``indices`` in order; the last is completed with ``valid`` = 0 copies.
    Process ``p`` of P gets rows ``p::P`` of every batch."""
    if batch_size % shard_count:
        raise ValueError(f"config field eval_batch_size={batch_size} must be divisible by the "
                         f"number of processes ({shard_count}).")
    indices = np.asarray(indices, np.int64)
    num = -(-len(indices) // batch_size)
    load = _LoadEval(source, indices, batch_size, shard_index, shard_count)
    return _iterate(grain.MapDataset.range(num).map(load), worker_count)


class _LoadEval(grain.transforms.Map):
    def __init__(self, source, indices: np.ndarray, batch_size: int, shard_index: int,
                 shard_count: int):
        self._source, self._indices, self._batch_size = source, indices, batch_size
        self._shard = (shard_index, shard_count)

    def map(self, b: int) -> dict[str, np.ndarray]:
        p, count = self._shard
        size = self._batch_size
        rows = _padded(self._indices[b * size:(b + 1) * size], size)
        return _stack([_fields(self._source, i, False, v) for i, v in rows[p::count]])


def epoch_steps(items, batch_size: int, exemplar_batch_size: int) -> int:
    """Steps per epoch: one pass over the current loader (``Plan.epoch_steps``)."""
    return Plan(*split_items(items), batch_size, exemplar_batch_size, seed=0).epoch_steps
