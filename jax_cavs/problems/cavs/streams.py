"""grain pipelines: per-task training streams and evaluation batches.

A stream is built from a list of *items* ``(record_index, is_memory, valid)`` over a split:
the current task's videos once each, plus the replay memory's videos (with duplicates when a
rehearsal policy such as CSR draws some more often). The items are shuffled together every
epoch, so current and replay samples are mixed at random inside batches (spec_cavs §6.1).

Each item is decoded into a model-ready clip (frames resized and ImageNet-normalised, audio to
VGGish log-mel, labels remapped):

* current-task samples keep only the current classes, everything else becomes background
  (PLOP's ``data_masking="current"``);
* replay samples keep their true labels restricted to the classes seen so far;
* evaluation keeps the seen classes, unseen ones become background (PLOP convention);
* frames that are not annotated get the ignore label 255 everywhere.

Evaluation batches can also carry other audio than the clip's own (``eval_batches``'s
``audio``; the audio-dependence probe, ``audio_dependence``): the log-mel of silence, or the
audio of another record.

The iterators are grain ``DatasetIterator``s whose ``get_state``/``set_state`` make a resumed run
see exactly the batches it would have seen. Worker processes are optional
(``worker_count``); per-process sharding (``shard_index``/``shard_count``) splits every global
batch between JAX processes.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np

from jax_cavs.data import IGNORE_INDEX
from jax_cavs.data import audio as audio_lib
from jax_cavs.data import transforms



def label_lut(keep: np.ndarray) -> np.ndarray:
    """uint8[256] lookup table: class c -> c if ``keep[c]`` else 0 (background); 255 stays 255."""
    lut = np.zeros(256, np.uint8)
    kept = np.flatnonzero(keep)
    lut[kept] = kept
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


# ``DecodeClip``'s audio besides a mapping to other records: the clip's own, or silence.
OWN_AUDIO, SILENCE = "own", "silence"


class DecodeClip(grain.transforms.Map):
    """``(record_index, is_memory, valid)`` -> one clip dict (label rules: module docstring).

    ``valid`` is 0 for the padding clips that complete the last evaluation batch. ``audio``:
    ``OWN_AUDIO`` (the record's), ``SILENCE`` (``data.audio.silent_log_mel``) or a mapping
    {record index: the record index whose audio it gets}.
    """

    def __init__(self, source, image_size: int, train: bool, lut: np.ndarray,
                 memory_lut: np.ndarray, audio: str | Mapping[int, int] = OWN_AUDIO):
        if isinstance(audio, str) and audio not in (OWN_AUDIO, SILENCE):
            raise ValueError(f"DecodeClip: audio must be {OWN_AUDIO!r}, {SILENCE!r} or a "
                             f"mapping of record indices, got {audio!r}.")
        self._source = source
        self._image_size = image_size
        self._train = train
        self._lut = lut
        self._memory_lut = memory_lut
        self._audio = audio

    def _log_mel(self, index: int, record, num_frames: int) -> np.ndarray:
        if self._audio == SILENCE:
            return audio_lib.silent_log_mel(num_frames)
        if self._audio != OWN_AUDIO:
            record = self._source[int(self._audio[index])]
        return audio_lib.log_mel_examples(audio_lib.int16_to_float(record["audio"]), num_frames)

    def map(self, item: tuple[int, bool, float]) -> dict[str, np.ndarray]:
        index, is_memory, valid = item
        record = self._source[int(index)]
        frames, labels = np.asarray(record["frames"]), np.asarray(record["labels"])
        if frames.shape[1:3] != (self._image_size, self._image_size):
            resize = transforms.train_resize_crop if self._train else transforms.eval_resize
            frames, labels = resize(frames, labels, self._image_size)
        label_mask = np.asarray(record["label_mask"], bool)
        frame_mask = np.asarray(record["frame_mask"], np.float32)
        labels = (self._memory_lut if is_memory else self._lut)[labels]
        labels[~label_mask] = IGNORE_INDEX
        # Padded frames are zero *after* normalisation, as in AVSBench's loader.
        normalized = transforms.normalize_imagenet(frames) * frame_mask[:, None, None, None]
        return {
            "frames": normalized,
            "audio": self._log_mel(int(index), record, frames.shape[0]),
            "labels": labels.astype(np.int32),
            "label_mask": label_mask.astype(np.float32),
            "frame_mask": frame_mask,
            "index": np.int32(index),
            "is_memory": np.bool_(is_memory),
            "valid": np.float32(valid),
        }


def train_iterator(source, items: Sequence[tuple[int, bool, float]], *, current_mask: np.ndarray,
                   seen_mask: np.ndarray, batch_size: int, num_epochs: int, seed: int,
                   image_size: int, worker_count: int = 0, shard_index: int = 0,
                   shard_count: int = 1) -> grain.DatasetIterator:
    """A checkpointable iterator over ``num_epochs`` shuffled epochs of ``items``.

    ``batch_size`` is the global batch; each of ``shard_count`` processes gets
    ``batch_size // shard_count`` clips of every global batch. Batches have static shapes:
    an epoch smaller than a batch is repeated until one batch fills.
    """
    if batch_size % shard_count:
        raise ValueError(f"config field batch_size={batch_size} must be divisible by the "
                         f"number of processes ({shard_count}).")
    items = list(items)
    repeats = -(-batch_size // len(items))
    dataset = (grain.MapDataset.source(items * repeats)
               .shuffle(seed=seed)
               .repeat(num_epochs))
    dataset = dataset[shard_index::shard_count]
    dataset = dataset.map(DecodeClip(source, image_size, True, label_lut(current_mask),
                                     label_lut(seen_mask)))
    dataset = dataset.batch(batch_size // shard_count, drop_remainder=True)
    iter_dataset = dataset.to_iter_dataset()
    if worker_count > 0:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(iter_dataset)


def eval_batches(source, indices: Sequence[int], *, seen_mask: np.ndarray, batch_size: int,
                 image_size: int, worker_count: int = 0, shard_index: int = 0,
                 shard_count: int = 1, audio: str | Mapping[int, int] = OWN_AUDIO
                 ) -> Iterator[dict[str, Any]]:
    """Evaluation batches over ``indices`` in order, padded to a static batch shape; the
    clips' audio as ``audio`` says (``DecodeClip``).

    The last batch is completed with copies of the last clip whose ``valid`` flag is 0, so
    metrics weight them out while every batch keeps the same shape (no re-compilation).
    ``batch_size`` is the global batch; each of ``shard_count`` processes gets
    ``batch_size // shard_count`` clips of every batch (and so the same number of batches).
    """
    if batch_size % shard_count:
        raise ValueError(f"config field eval_batch_size={batch_size} must be divisible by the "
                         f"number of processes ({shard_count}).")
    indices = [int(i) for i in indices]
    pad = (-len(indices)) % batch_size
    items = [(i, False, 1.0) for i in indices] + [(indices[-1], False, 0.0)] * pad
    lut = label_lut(seen_mask)
    dataset = (grain.MapDataset.source(items)[shard_index::shard_count]
               .map(DecodeClip(source, image_size, False, lut, lut, audio))
               .batch(batch_size // shard_count))
    iter_dataset = dataset.to_iter_dataset()
    if worker_count > 0:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(iter_dataset)
