"""The core loop knows no problem: a hand-made classification problem (no background, no
frames, no pixels) runs through ``core.loop.Experiment`` end to end, and the accuracy matrix,
the eval points and the summary it writes equal the values derived by hand below."""

from __future__ import annotations

import importlib
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_cavs.core import loop
from jax_cavs.core.problem import Outputs
from jax_cavs.core.scenario import Scenario, TaskSpec

importlib.import_module("jax_cavs.cl.strategies")  # registers finetune

# 6 test records of classes 0..2 (K = 3, two tasks: {0, 1} then {2}). The "model" outputs
# fixed logits per record (its one parameter contributes 0), so every score is known:
# record:        0    1    2    3    4    5
# label:         0    0    1    1    2    2
# top logit:     0    2    1    2    2    0
# 2nd logit:     -    1    -    0    -    -
LABELS = np.array([0, 0, 1, 1, 2, 2])
LOGITS = np.array([[3, 0, 0], [0, 1, 3], [0, 3, 0], [1, 0, 3], [0, 0, 3], [3, 0, 0]],
                  np.float32)
# After task 0 (seen {0, 1}; class 2 masked): predictions 0, 1, 1, 0, 1, 0.
#   group 0 = records of classes {0, 1}: correct 0, 2 -> 2/4; group 1 ({2}) unseen: None.
# After task 1 (seen all): predictions 0, 2, 1, 2, 2, 0.
#   group 0: correct 0, 2 -> 2/4; group 1: records 4, 5 -> 1/2.
EXPECTED_MATRIX = [[0.5, None], [0.5, 0.5]]


class Frozen(nn.Module):
    @nn.compact
    def __call__(self, x):
        return 0.0 * nn.Dense(3)(x)


class Accuracy:
    """Per-class (correct, total) counts; group score = accuracy over the group's records."""

    headline = "acc"

    def init(self):
        return jnp.zeros((3, 2), jnp.int32)

    def update(self, stats, outputs, batch, seen):
        pred = ToyProblem.predict(None, outputs, seen)
        hit = (pred == batch["labels"]) * batch["valid"]
        one_hot = jax.nn.one_hot(batch["labels"], 3, dtype=jnp.int32) * batch["valid"][:, None]
        return stats + jnp.stack([one_hot.T @ hit.astype(jnp.int32), one_hot.sum(0)], -1)

    def finalize(self, stats, scenario, seen):
        def score(mask):
            total = int(stats[mask, 1].sum())
            return float(stats[mask, 0].sum() / total) if total and seen[mask].all() else None

        groups = [score(scenario.group_mask(j)) for j in range(len(scenario.report_groups))]
        return {"groups": groups, "record": {"acc": {"all": score(seen)}}}

    def summary(self, records):
        return {"last_all": records[-1]["acc"]["all"]}


class ToyProblem:
    name, num_classes, has_background = "toy", 3, False

    def __init__(self):
        self.evaluator, self.model = Accuracy(), Frozen()

    def scenario(self, joint):
        tasks = (TaskSpec(0, (0, 1), np.array([0, 1, 2, 3])), TaskSpec(1, (2,), np.array([4, 5])))
        return Scenario("2-1", 3, tasks, test_indices=np.arange(6), report_groups=((0, 1), (2,)),
                        has_background=False, eval_points=((1, 1),))

    def init(self, rng):
        return {"params": self.model.init(rng, jnp.zeros((1, 3)))["params"]}

    def apply(self, variables, batch, *, train, drop=frozenset()):
        frozen = self.model.apply({"params": variables["params"]}, batch["logits"])
        logits = batch["logits"] + frozen
        return Outputs(logits, {}), ({} if train else None)

    def predict(self, outputs, seen):
        return jnp.argmax(jnp.where(seen, outputs.logits, -jnp.inf), axis=-1)

    def loss(self, outputs, batch, classes, labels=None):
        logp = jax.nn.log_softmax(jnp.where(classes, outputs.logits, -1e9))
        return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][:, None], -1))

    def param_roles(self):
        return {"classifier": (), "norm": (), "frozen": ()}

    def _batch(self, indices, valid):
        return {"logits": LOGITS[indices], "labels": LABELS[indices].astype(np.int32),
                "valid": np.asarray(valid, np.float32), "index": np.asarray(indices)}

    def steps_per_epoch(self, items, batch_size):
        return len(items) // batch_size

    def train_stream(self, items, task, *, batch_size, num_epochs, seed, worker_count,
                     shard_index, shard_count):
        records = [i for i, _, _ in items] * num_epochs
        batches = [self._batch(records[k:k + batch_size], [1.0] * batch_size)
                   for k in range(0, len(records) - batch_size + 1, batch_size)]
        return _Iterator(batches)

    def eval_batches(self, split, indices, classes, *, batch_size, worker_count, shard_index,
                     shard_count):
        indices = list(indices)
        for k in range(0, len(indices), batch_size):
            chunk = indices[k:k + batch_size]
            pad = batch_size - len(chunk)
            yield self._batch(chunk + chunk[:1] * pad, [1.0] * len(chunk) + [0.0] * pad)

    def report_inputs(self, forward, state, scenario, t, batches):
        return {}

    def report_panels(self, workdir):
        return types.SimpleNamespace(name=str, figures=lambda m: [], sections=lambda m: [],
                                     persist=lambda d: None)


class _Iterator:
    """A checkpointable iterator over prepared batches (grain's get_state / set_state)."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def __next__(self):
        self.position += 1
        return self.batches[self.position - 1]

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _config():
    return ml_collections.ConfigDict(dict(
        problem="toy", seed=0, first_task_from="", strategy=dict(name="finetune"),
        optimizer=dict(name="adam", lr=0.1, lr_incremental=0.1, weight_decay=0.0, grad_clip=0.0),
        train=dict(batch_size=2, epochs=1, eval_batch_size=4, worker_count=0, log_every=1,
                   checkpoint_every=0, validate_every=0, select_metric="acc.all"),
        parallel=dict(data=-1, fsdp=1)))


def test_a_problem_the_core_does_not_know_runs_and_scores_by_hand(tmp_path):
    metrics = loop.Experiment.create(_config(), str(tmp_path), ToyProblem()).run()
    with open(tmp_path / "metrics.json") as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(metrics))
    assert written["problem"] == "toy" and written["headline"] == "acc"
    assert written["accuracy_matrix"] == EXPECTED_MATRIX
    # "all" over the seen classes: task 0 records 0, 2 of 4; task 1 records 0, 2, 4 of 6.
    assert [t["acc"]["all"] for t in written["tasks"]] == [0.5, 0.5]
    # One eval point after the first step of task 1: the (constant) model scores as at its end.
    (point,) = written["tasks"][1]["eval_points"]
    assert point["step"] == 1 and point["groups"] == EXPECTED_MATRIX[1]
    # Summary by hand: AA = (0.5 + 0.5) / 2, LA = (0.5 + 0.5) / 2, forgetting = 0.5 - 0.5.
    assert written["summary"] == {"num_tasks": 2, "average_accuracy": 0.5,
                                  "learning_accuracy": 0.5, "forgetting": 0.0, "bwt": 0.0,
                                  "last_all": 0.5}  # the problem's own summary entry
