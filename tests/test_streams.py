"""Label rules and batch shapes of the data streams (jax_cavs/problems/cavs/streams.py) on a
tiny hand-made in-memory source (a list of records in the layout ``DecodeClip`` reads).

K = 6 outputs: background 0, old classes 1-2, current classes 3-4 (the task being learned),
future class 5. Frames are 4x4 at image_size 4, so no resize touches the labels; 255 is the
ignore label. Expected label maps are written out by hand below.
"""

from __future__ import annotations

import numpy as np

from jax_cavs.core.scenario import training_items
from jax_cavs.problems.cavs import streams

SIZE, T = 4, 3
CURRENT = np.array([0, 0, 0, 1, 1, 0], bool)
SEEN = np.array([1, 1, 1, 1, 1, 0], bool)

LABEL = np.array([[0, 1, 2, 3],
                  [4, 5, 255, 3],
                  [1, 1, 4, 4],
                  [5, 5, 0, 2]], np.uint8)
# Current task: only 3 and 4 kept, old (1, 2) and future (5) -> background, 255 stays.
AS_CURRENT = np.array([[0, 0, 0, 3],
                       [4, 0, 255, 3],
                       [0, 0, 4, 4],
                       [0, 0, 0, 0]], np.int32)
# Memory clip / evaluation: seen classes 0-4 kept, the unseen class 5 -> background.
AS_SEEN = np.array([[0, 1, 2, 3],
                    [4, 0, 255, 3],
                    [1, 1, 4, 4],
                    [0, 0, 0, 2]], np.int32)
UNANNOTATED = np.full((SIZE, SIZE), 255, np.int32)


def _record(seed, label_mask, frame_mask):
    """Frames: seeded noise; labels: LABEL, its transpose, its flip (the rules are per pixel,
    so the expectations transform the same way); audio: a 0.5 s silent clip."""
    rng = np.random.default_rng(seed)
    return {"frames": rng.integers(0, 256, (T, SIZE, SIZE, 3), dtype=np.uint8),
            "labels": np.stack([LABEL, LABEL.T, LABEL[::-1]]),
            "label_mask": np.array(label_mask, bool),
            "frame_mask": np.array(frame_mask, np.float32),
            "audio": np.zeros(8000, np.int16)}


# Record 0: frame 2 is padding (no image, no annotation); record 1: only frame 0 annotated
# (AVSBench v1s); record 2: every frame annotated.
SOURCE = [_record(0, [1, 1, 0], [1, 1, 0]), _record(1, [1, 0, 0], [1, 1, 1]),
          _record(2, [1, 1, 1], [1, 1, 1])]


def _expected(rule, label_mask):
    maps = [rule, rule.T, rule[::-1]]
    return np.stack([m if annotated else UNANNOTATED for m, annotated in zip(maps, label_mask)])


def _decode(item, train=True):
    return streams.DecodeClip(SOURCE, SIZE, train, streams.label_lut(CURRENT),
                              streams.label_lut(SEEN)).map(item)


def test_label_lut_by_hand():
    np.testing.assert_array_equal(streams.label_lut(CURRENT)[[0, 1, 2, 3, 4, 5, 255]],
                                  [0, 0, 0, 3, 4, 0, 255])
    np.testing.assert_array_equal(streams.label_lut(SEEN)[[0, 1, 2, 3, 4, 5, 255]],
                                  [0, 1, 2, 3, 4, 0, 255])


def test_current_clip_keeps_only_current_classes():
    clip = _decode((0, False, 1.0))
    np.testing.assert_array_equal(clip["labels"], _expected(AS_CURRENT, [1, 1, 0]))
    assert clip["labels"].dtype == np.int32
    np.testing.assert_array_equal(clip["label_mask"], [1, 1, 0])
    # The padded frame is zero after normalisation; real frames are not.
    assert not clip["frames"][2].any() and clip["frames"][:2].std() > 0
    assert (clip["index"], clip["is_memory"], clip["valid"]) == (0, False, 1.0)


def test_memory_clip_keeps_true_labels_of_seen_classes():
    clip = _decode((2, True, 1.0))
    np.testing.assert_array_equal(clip["labels"], _expected(AS_SEEN, [1, 1, 1]))
    assert clip["is_memory"]


def test_unannotated_frames_are_ignored_everywhere():
    for is_memory, rule in ((False, AS_CURRENT), (True, AS_SEEN)):
        clip = _decode((1, is_memory, 1.0))
        np.testing.assert_array_equal(clip["labels"], _expected(rule, [1, 0, 0]))
        np.testing.assert_array_equal(clip["labels"][1:], 255)
        np.testing.assert_array_equal(clip["frame_mask"], [1, 1, 1])  # frames still real


def test_eval_batches_keep_seen_classes_and_pad_the_last_batch():
    batches = list(streams.eval_batches(SOURCE, [0, 1, 2], seen_mask=SEEN, batch_size=2,
                                        image_size=SIZE))
    assert len(batches) == 2
    first, last = batches
    np.testing.assert_array_equal(first["index"], [0, 1])
    np.testing.assert_array_equal(first["valid"], [1, 1])
    np.testing.assert_array_equal(first["labels"][0], _expected(AS_SEEN, [1, 1, 0]))
    np.testing.assert_array_equal(first["labels"][1], _expected(AS_SEEN, [1, 0, 0]))
    # Clip 2, then a padding copy of it with valid = 0 (same content, same shapes).
    np.testing.assert_array_equal(last["index"], [2, 2])
    np.testing.assert_array_equal(last["valid"], [1, 0])
    for key in ("frames", "audio", "labels", "label_mask", "frame_mask"):
        np.testing.assert_array_equal(last[key][1], last[key][0], err_msg=key)
        assert last[key].shape == first[key].shape, key
    np.testing.assert_array_equal(last["labels"][0], _expected(AS_SEEN, [1, 1, 1]))


def test_training_batches_have_static_shapes_and_per_clip_rules():
    items = training_items([0, 1], memory_indices=[2])
    assert items == [(0, False, 1.0), (1, False, 1.0), (2, True, 1.0)]
    batches = list(streams.train_iterator(SOURCE, items, current_mask=CURRENT, seen_mask=SEEN,
                                          batch_size=2, num_epochs=2, seed=0, image_size=SIZE))
    # 3 items x 2 epochs = 6 clips -> 3 full batches (drop_remainder).
    assert len(batches) == 3
    shapes = {"frames": (2, T, SIZE, SIZE, 3), "audio": (2, T, 96, 64),
              "labels": (2, T, SIZE, SIZE), "label_mask": (2, T), "frame_mask": (2, T),
              "index": (2,), "is_memory": (2,), "valid": (2,)}
    seen_items = []
    for batch in batches:
        assert {k: v.shape for k, v in batch.items()} == shapes
        for clip in range(2):
            index, is_memory = int(batch["index"][clip]), bool(batch["is_memory"][clip])
            seen_items.append((index, is_memory))
            rule = AS_SEEN if is_memory else AS_CURRENT
            np.testing.assert_array_equal(
                batch["labels"][clip], _expected(rule, SOURCE[index]["label_mask"]))
    assert sorted(seen_items) == sorted([(0, False), (1, False), (2, True)] * 2)


def test_an_epoch_smaller_than_a_batch_still_fills_it_and_shards_split_it():
    items = training_items([2])
    (batch,) = list(streams.train_iterator(SOURCE, items, current_mask=CURRENT, seen_mask=SEEN,
                                           batch_size=4, num_epochs=1, seed=0, image_size=SIZE))
    assert batch["labels"].shape == (4, T, SIZE, SIZE)
    np.testing.assert_array_equal(batch["index"], [2, 2, 2, 2])
    halves = [list(streams.train_iterator(SOURCE, training_items([0, 1]),
                                          current_mask=CURRENT, seen_mask=SEEN, batch_size=2,
                                          num_epochs=1, seed=0, image_size=SIZE,
                                          shard_index=s, shard_count=2)) for s in (0, 1)]
    assert [len(h) for h in halves] == [1, 1]
    assert all(h[0]["labels"].shape == (1, T, SIZE, SIZE) for h in halves)
    assert sorted(int(h[0]["index"][0]) for h in halves) == [0, 1]
