"""Fixed-capacity replay memory of *sample indices* (not samples).

The memory lives inside the continual train state, so it is checkpointed with everything else
and has static shapes for the whole experiment: ``capacity`` slots, each holding the record
index of a training video in the train split, the classes it was kept for (a video picked for
several classes is stored once and tagged with all of them, spec_cavs §6.2), and the scores
that justified the choice (for MSS: audio-visual score, visual-only score, deviation).
The decoded clips are read back through the data pipeline when the memory is replayed.
"""

from __future__ import annotations

from typing import Sequence

import flax
import jax.numpy as jnp
import numpy as np

NUM_SCORES = 3  # (audio-visual score, visual-only score, deviation); unused entries are 0


@flax.struct.dataclass
class ReplayMemory:
    """ids int32[C] (-1 = empty), tags bool[C, K], scores float32[C, 3], valid bool[C]."""

    ids: jnp.ndarray
    tags: jnp.ndarray
    scores: jnp.ndarray
    valid: jnp.ndarray

    @classmethod
    def empty(cls, capacity: int, num_classes: int) -> "ReplayMemory":
        return cls(ids=jnp.full((capacity,), -1, jnp.int32),
                   tags=jnp.zeros((capacity, num_classes), bool),
                   scores=jnp.zeros((capacity, NUM_SCORES), jnp.float32),
                   valid=jnp.zeros((capacity,), bool))

    @property
    def capacity(self) -> int:
        return self.ids.shape[0]

    def size(self) -> int:
        return int(np.asarray(self.valid).sum())

    def record_ids(self) -> np.ndarray:
        """Host array of the stored record indices (each stored video once)."""
        return np.asarray(self.ids)[np.asarray(self.valid)]

    def ids_of_class(self, c: int) -> np.ndarray:
        """Host array of the stored record indices tagged with class ``c``."""
        keep = np.asarray(self.valid) & np.asarray(self.tags)[:, c]
        return np.asarray(self.ids)[keep]

    def add(self, ids: Sequence[int], classes: Sequence[int],
            scores: np.ndarray | None = None) -> "ReplayMemory":
        """Stores ``ids[i]`` for class ``classes[i]``; an id already stored only gains the tag.

        Host-side (called between tasks). Raises when the capacity is exhausted, since a
        fixed-capacity buffer that silently drops selections would bias the rehearsal.
        """
        mem_ids = np.asarray(self.ids).copy()
        tags = np.asarray(self.tags).copy()
        mem_scores = np.asarray(self.scores).copy()
        valid = np.asarray(self.valid).copy()
        scores = (np.zeros((len(ids), NUM_SCORES), np.float32) if scores is None
                  else np.asarray(scores, np.float32).reshape(len(ids), -1))
        for i, (video, c) in enumerate(zip(ids, classes)):
            slot = np.flatnonzero(valid & (mem_ids == video))
            if slot.size == 0:
                free = np.flatnonzero(~valid)
                if free.size == 0:
                    raise ValueError(
                        f"replay memory is full ({self.capacity} slots, the strategy's "
                        f"memory_capacity); raise config field strategy.per_class (replay) "
                        f"or strategy.memory_per_class (cmr), or select fewer videos.")
                slot = free[:1]
                mem_ids[slot], valid[slot] = video, True
                mem_scores[slot, :scores.shape[1]] = scores[i]
            tags[slot, c] = True
        return ReplayMemory(ids=jnp.asarray(mem_ids), tags=jnp.asarray(tags),
                            scores=jnp.asarray(mem_scores), valid=jnp.asarray(valid))
