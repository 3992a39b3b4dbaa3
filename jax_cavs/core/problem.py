"""The Problem protocol: everything the core needs to know of a task kind, and nothing more.

The loop, the steps, the state and the optimiser never look inside a batch, a model or a
score: they ask the problem (ARCHITECTURE.md, "The Problem protocol"). One object per problem
implements this protocol (``problems/<name>/problem.py``); the four systems of the family
(semantic AVS, binary AVS, video classification, sound separation) differ only here.

A batch is a dict of arrays whose first axis is the clip (sample) axis; the core splits it over
devices and never reads a key, except ``valid`` (float32 [B], 0 for the padding clips that
complete the last evaluation batch).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp

Batch = dict[str, jnp.ndarray]
PyTree = Any
# A parameter role: regexes (``re.search``) over '/'-joined parameter paths
# (``core.roles.param_paths``). The roles a problem may name: "classifier" (the class head,
# whose rows follow the class axis), "norm" (normalisation layers, which importance
# regularisers leave free), "frozen" (no optimiser state, no update), "adapter" (LoRA-like
# parameters), "decoder".
Roles = Mapping[str, tuple[str, ...]]

# Modalities ``Problem.apply`` can drop (feed the model's "absent" input): the visual-only
# path of CMR's twin and the modality ablations, without special cases in the core.
MODALITIES = ("audio", "visual")


def model_inputs(batch: Batch, drop: frozenset[str], keys: Mapping[str, str], owner: str,
                 absent: Mapping[str, Callable[[jnp.ndarray], jnp.ndarray]] | None = None
                 ) -> dict[str, jnp.ndarray]:
    """{modality: its batch entry ``keys[modality]``}, the model's "absent" input for the
    ``drop``ped modalities: ``absent[modality](entry)`` where the problem names one (CAVS:
    the log-mel of silence), zeros otherwise; an unknown modality is an error naming
    ``owner``."""
    unknown = set(drop) - set(MODALITIES)
    if unknown:
        raise ValueError(f"{owner}: cannot drop {sorted(unknown)}; modalities are "
                         f"{MODALITIES}.")
    absent = absent or {}
    return {m: absent.get(m, jnp.zeros_like)(batch[k]) if m in drop else batch[k]
            for m, k in keys.items()}


class Outputs(NamedTuple):
    """A model's outputs: ``logits`` [..., K] over every class of the scenario (static shape;
    masks say which classes are live) and a dict of named ``features`` that strategies read
    by name (e.g. ``features["backbone"]`` for PLOP's POD)."""

    logits: jnp.ndarray
    features: dict[str, Any]


class Evaluator(Protocol):
    """Scores a model on a split, one batch at a time, without host syncs inside the pass.

    ``update`` is pure and jit'd by the core; ``finalize`` runs once on the host and returns::

        {"groups": [score of report group j, None where undefined],  # a row of the
                                                                     # accuracy matrix
         "record": {...}}   # what metrics.json's tasks[t] holds beside "task"/"classes"

    ``headline`` names the record entry (a dict of scalars) the run summary prints per task.
    """

    headline: str

    def init(self) -> PyTree: ...

    def update(self, stats: PyTree, outputs: Outputs, batch: Batch,
               seen: jnp.ndarray) -> PyTree: ...

    def finalize(self, stats: PyTree, scenario: Any, seen: Any) -> dict[str, Any]: ...

    def summary(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The problem's own run summary from the finished tasks' records (e.g. AV-CIL's mean
        accuracy and average forgetting over steps), merged into metrics.json's
        ``summary`` beside the accuracy matrix's (``core.accuracy``); {} for none."""


class Problem(Protocol):
    """One task kind: model, batches, losses' inputs, scores, parameter roles.

    Attributes:
      name: the problem's name (``config.problem``).
      num_classes: K, outputs of the model (background included where there is one).
      has_background: class 0 is a background that every task shares (CAVS); masks then
        always include it.
      evaluator: see ``Evaluator``.
    """

    name: str
    num_classes: int
    has_background: bool
    evaluator: Evaluator

    def init(self, rng: jax.Array) -> dict[str, PyTree]:
        """Initial variables ({"params", "batch_stats"?}) from ``example_batch``."""

    def example_batch(self) -> Batch:
        """A batch of zeros with the shapes of one real clip (model initialisation)."""

    def apply(self, variables: dict[str, PyTree], batch: Batch, *, train: bool,
              drop: frozenset[str] = frozenset()) -> tuple[Outputs, PyTree | None]:
        """Runs the model; returns (outputs, new batch statistics or None when not training).

        ``drop``: modalities of ``MODALITIES`` replaced by the model's "absent" input.
        """

    def predict(self, outputs: Outputs, seen: jnp.ndarray) -> jnp.ndarray:
        """The decoder: the prediction (CAVS: a class per pixel) over the live classes ``seen``
        (bool [K]), for report panels and strategies that compare predictions (CMR's MSS)."""

    def loss(self, outputs: Outputs, batch: Batch, classes: jnp.ndarray,
             labels: jnp.ndarray | None = None) -> jnp.ndarray:
        """The problem's supervised loss (float32 scalar) over the live ``classes`` (bool
        [K]): the softmax runs over them only; ``labels`` default to ``batch``'s."""

    # Optional: ``loss_terms(outputs, batch, classes, *, drop) -> {name: weighted scalar}``,
    # terms the problem adds to every strategy's training loss (``core.steps``; CAVS: the
    # AVM audio / visual matching term), {} for none; ``drop`` as in ``apply``.

    def weights(self, batch: Batch, *, labelled: bool = True) -> jnp.ndarray:
        """Per-element weights broadcastable to ``logits[..., 0]``: 1 on real samples;
        ``labelled`` also weighs out elements without ground truth. Distillation needs no
        labels and uses ``labelled=False``."""

    def param_roles(self) -> Roles:
        """The parameter roles of this problem's model (``Roles``)."""

    def class_statistics(self, outputs: Outputs | None, batch: Batch) -> dict[str, Any]:
        """Per clip and class, what replay selection needs (jit'd, ``cl.selection``):
        ``"presence"`` float [B, K] (> 0: the clip is a member of the class) and, given the
        eval-mode ``outputs``, ``"feature_sums"`` [B, K, C] with ``"feature_weights"``
        [B, K] (the class's mean feature of the clip is their ratio; herding)."""

    def steps_per_epoch(self, items: Sequence[tuple[int, bool, float]], batch_size: int) -> int:
        """Optimiser steps of one epoch of ``items`` (``train_stream`` yields exactly this many
        batches per epoch): ``core.scenario.steps_per_epoch`` when replayed items are shuffled
        in with the task's, fewer when an epoch is one pass over the task's items only."""

    def train_stream(self, items: Sequence[tuple[int, bool, float]], task: Any, *,
                     batch_size: int, num_epochs: int, seed: int, worker_count: int,
                     shard_index: int, shard_count: int) -> Iterator[Batch]:
        """Checkpointable iterator (``get_state``/``set_state``) over ``num_epochs``
        shuffled epochs of ``items`` ((record, is_memory, valid) of the train split), labels
        by ``task``'s label policy."""

    def eval_batches(self, split: str, indices: Sequence[int], classes: Any, *,
                     batch_size: int, worker_count: int, shard_index: int,
                     shard_count: int, **options) -> Iterator[Batch]:
        """Eval-mode batches of ``split`` in order, labels restricted to ``classes``, the last
        batch padded with ``valid = 0`` clips. ``options``: the problem's own variants of the
        inputs (CAVS: another clip's audio), which the core passes through for its probes."""

    # Optional: ``probe_scores(evaluate, scenario, t, scores) -> {name: value}``, scores of
    # the learner after task ``t`` beyond the evaluator's (CAVS: how much its predictions
    # depend on the audio), written in metrics.json's ``tasks[t]`` and, for the latest
    # task, at its top level (``core.outputs.probe_scores``). ``evaluate(indices=None,
    # **options)`` runs the compiled evaluation over test records ``indices`` (default: the
    # scenario's) built with ``eval_batches(..., **options)`` and returns
    # ``Evaluator.finalize``'s result; ``scores`` is that of the task's own evaluation.
