"""AV-CIL's data plumbing and scores, against values derived by hand from the authors' code:
the current + exemplar batches (ours/train_incremental_ours.py l. 76-82, 107: ``drop_last``
loaders, ``itertools.cycle`` of the exemplar loader), the memory rule
(ours/dataloader_ours.py ``_update_exemplars_``), the scenario's splits and the paper's
mean accuracy / average forgetting (``detailed_test``)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from jax_cavs.core.memory import ReplayMemory
from jax_cavs.problems.av_cil import evaluator, exemplars, scenarios, streams


class Source:
    """Clip i: audio = [i], visual = [[i]], label = i // 10."""

    def __getitem__(self, i):
        return {"audio": np.full((1,), i, np.float32), "visual": np.full((1, 1), i, np.float32),
                "label": np.int32(i // 10)}


def items(current, memory):
    return [(i, False, 1.0) for i in current] + [(i, True, 1.0) for i in memory]


def test_batches_pair_a_current_epoch_with_a_cycled_exemplar_pass():
    current, memory = list(range(10)), [100, 101, 102, 103, 104]
    # B_c = 4 -> 10 // 4 = 2 steps per epoch (drop_last); B_e = 2 -> 2 exemplar batches per
    # pass (104 or another is dropped), cycled: step j uses exemplar batch j % 2.
    assert streams.epoch_steps(items(current, memory), 4, 2) == 2
    it = streams.train_iterator(Source(), items(current, memory), batch_size=4,
                                exemplar_batch_size=2, num_epochs=2, seed=3)
    batches = [next(it) for _ in range(4)]
    for epoch in range(2):
        rng = np.random.default_rng([3, epoch])
        cur, mem = rng.permutation(current), rng.permutation(memory)
        for j in range(2):
            b = batches[2 * epoch + j]
            np.testing.assert_array_equal(b["index"], [*cur[4 * j:4 * j + 4],
                                                       *mem[2 * j:2 * j + 2]])
            np.testing.assert_array_equal(b["is_memory"], [0, 0, 0, 0, 1, 1])
            np.testing.assert_array_equal(b["valid"], np.ones(6))
            np.testing.assert_array_equal(b["label"], b["index"] // 10)
    # Resuming from the state after step 1 gives the same steps 2 and 3.
    it = streams.train_iterator(Source(), items(current, memory), batch_size=4,
                                exemplar_batch_size=2, num_epochs=2, seed=3)
    next(it)
    state = it.get_state()
    again = streams.train_iterator(Source(), items(current, memory), batch_size=4,
                                   exemplar_batch_size=2, num_epochs=2, seed=3)
    again.set_state(state)
    for want in batches[1:]:
        np.testing.assert_array_equal(next(again)["index"], want["index"])


def test_small_loaders_shrink_to_their_data_and_pad_the_static_shape():
    """The code's ``min(batch, len(set))``: 3 current clips, 1 exemplar -> B_c = 3, B_e = 1;
    the rest of the static 4 + 2 rows are padding (valid 0)."""
    it = streams.train_iterator(Source(), items([1, 2, 3], [50]), batch_size=4,
                                exemplar_batch_size=2, num_epochs=1, seed=0)
    b = next(it)
    np.testing.assert_array_equal(b["valid"], [1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(b["is_memory"], [0, 0, 0, 0, 1, 1])
    assert sorted(b["index"][:3]) == [1, 2, 3] and b["index"][4] == 50
    # exemplar_batch_size 0: one loader over both (fine-tuning, the oracle, iCaRL).
    assert streams.epoch_steps(items(range(6), range(90, 96)), 4, 0) == 3


def test_memory_truncates_old_classes_and_fills_the_new():
    """|M| = 12: after task 1 (2 classes) m = 6; after task 2 (4 classes) m = 3: old classes
    keep their first 3, the new ones get 3 each (class 3 has only 2 clips)."""
    memory = ReplayMemory.empty(12, 4)
    m = exemplars.per_class(12, 2)
    memory = exemplars.rebuild(memory, [], {0: np.arange(6), 1: np.arange(10, 16)}, m)
    assert m == 6 and memory.size() == 12
    m = exemplars.per_class(12, 4)
    memory = exemplars.rebuild(memory, [0, 1], {2: np.array([25, 21, 27, 29]),
                                                3: np.array([33, 30])}, m)
    assert m == 3
    for c, want in {0: [0, 1, 2], 1: [10, 11, 12], 2: [25, 21, 27], 3: [33, 30]}.items():
        np.testing.assert_array_equal(memory.ids_of_class(c), want)
    with pytest.raises(ValueError, match="memory_size=3 is smaller than the 4 classes"):
        exemplars.per_class(3, 4)


def test_scenario_tasks_validation_and_cumulative_oracle():
    train = np.repeat(np.arange(6), 3)      # 3 clips per class
    val, test = np.arange(6), np.repeat(np.arange(6), 2)
    sc = scenarios.build_scenario(train, val, test, 6, 2)
    assert [t.classes for t in sc.tasks] == [(0, 1), (2, 3), (4, 5)]
    np.testing.assert_array_equal(sc.tasks[1].train_indices, [6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(sc.tasks[1].val_indices, [0, 1, 2, 3])  # every seen class
    assert len(sc.test_indices) == 12 and not sc.has_background
    oracle = scenarios.build_scenario(train, val, test, 6, 2, cumulative=True)
    np.testing.assert_array_equal(oracle.tasks[1].train_indices, np.arange(12))
    assert oracle.tasks[1].label_policy == "seen"
    with pytest.raises(ValueError, match="classes_per_task=4 does not divide"):
        scenarios.build_scenario(train, val, test, 6, 4)


def test_mean_accuracy_and_the_codes_running_max_forgetting():
    """Three tasks. a_t = 0.9, 0.6, 0.5; rows a_{t,i}:
      t=1: [0.9]
      t=2: [0.5, 0.8]          F_2 = 0.9 - 0.5 = 0.4; best = [0.9, 0.8]
      t=3: [0.6, 0.4, 0.7]     F_3 = mean(0.9 - 0.6, 0.8 - 0.4) = 0.35
    Mean acc = (0.9 + 0.6 + 0.5) / 3; Ave. Forget. = (0.4 + 0.35) / 2."""
    got = evaluator.mean_accuracy_and_forgetting([[0.9], [0.5, 0.8], [0.6, 0.4, 0.7]],
                                                 [0.9, 0.6, 0.5])
    assert got == pytest.approx({"mean_accuracy": 2.0 / 3.0, "average_forgetting": 0.375})
    # A later improvement raises best_i (the running max, not the first score).
    got = evaluator.mean_accuracy_and_forgetting([[0.5], [0.7, 0.1], [0.6, 0.1, 0.1]],
                                                 [0.5, 0.4, 0.3])
    assert got["average_forgetting"] == pytest.approx(((0.5 - 0.7) + (0.7 - 0.6 + 0.0) / 2) / 2)


def test_evaluator_counts_only_seen_classes_test_clips():
    import jax.numpy as jnp

    ev = evaluator.ClassificationEvaluator(4)
    sc = scenarios.build_scenario(np.arange(4), np.arange(4), np.arange(4), 4, 2)
    logits = jnp.asarray([[5, 0, 0, 9], [0, 5, 0, 0], [0, 0, 5, 0], [1, 0, 0, 0]], jnp.float32)
    batch = {"label": jnp.asarray([0, 0, 2, 3]), "valid": jnp.asarray([1.0, 1, 1, 0])}
    seen = jnp.asarray([True, True, False, False])
    stats = ev.update(ev.init(), types.SimpleNamespace(logits=logits), batch, seen)
    out = ev.finalize(stats, sc, np.asarray(seen))
    # Seen {0, 1}: clips 0 (right: class 3's 9 is masked) and 1 (wrong); clip 2 is of an unseen
    # class, clip 3 is padding.
    assert out["groups"] == [0.5, None]
    assert out["record"]["acc"] == {"old": None, "new": 0.5, "all": 0.5}
