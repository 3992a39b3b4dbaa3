"""iCaRL (Rebuffi et al., CVPR 2017) as AV-CIL's authors run it for their Table 1, with the
herded exemplar memory and nearest-mean-of-exemplars classifier AFC shares
[AVCIL-code iCaRL/train_incremental_icarl.py, iCaRL/dataloader_icarl.py, run_incremental_icarl.sh].

**Loss** (``iCaRL_loss`` l. 55-62), over every row of a batch drawn from the task's clips and
the exemplars shuffled together (``_conbine_exemplar``, dataloader l. 105-108; here
``train.exemplar_batch_size = 0``), with z the learner's and z° the previous task's best
model's logits::

    L = CE(softmax over the seen classes) + mean_{i, k∈old} BCE_logits(σ(z_ik), σ(z°_ik))

where ``BCE_logits(x, y) = softplus(x) − x·y``: the code feeds the *sigmoids* to
``binary_cross_entropy_with_logits``, which applies a second sigmoid, so the distillation
compares σ(σ(z)) with σ(z°) (the code's formula, kept; the paper's is BCE(σ(z), σ(z°))).
Weight 1, no temperature; the first task is the CE alone.

**Exemplars** (``gen_step_exemplar_set`` l. 65-155): features φ = the L2-normalised fusion
input h (``out_features_norm``), μ_c the mean of class c's φ over its training clips, and the
k-th pick ``argmin_x ‖μ_c − (Σ_{j<k} φ_{p_j} + φ_x)/k‖`` over *all* the class's clips, picked
ones included (l. 121-123): the code herds **with replacement**, so a clip may fill several
slots and is then replayed and averaged with that multiplicity (``herding_with_replacement``;
False: iCaRL's distinct picks, ``cl.selection.herding_order``). m = |M| // n_seen picks per new
class (l. 236, 311), min(m, n_c) for a class of n_c < m clips (the code pads the rest with
``None``, l. 116-119); the older classes keep the first m of their picks (l. 138). Each pick
takes its own slot of the memory (``sequence_memory``), so ``record_ids`` replays the
duplicates as the code does.

**NME** (l. 235-238, 272-275, 319-327): the class means μ_c = mean of the current model's φ
over the class's exemplar picks (old classes: their kept picks, re-encoded; not normalised
again), and prediction ``argmin_c ‖φ(x) − μ_c‖`` (``heads.nme_scores``; the model's
``nme=True``, ``evaluation.logits = "nme_logits"``). The code recomputes the exemplars and
means after every epoch and keeps the epoch of best NME validation accuracy; here
``before_validation`` refreshes the means before each validation and ``end_task`` herds with
the selected model, which is the best epoch's herding. The FC variant validates and tests on
the logits and herds once, with the best model (l. 309-313).

Paper settings (run_incremental_icarl.sh): Adam lr 1e-3, weight decay 1e-4, batch 256, |M| =
340 / 500 / 1500 (AVE / K-S / VS100), epochs audio / visual / audio-visual: AVE 300 / 200 /
150, K-S 200 / 100 / 100, VS100 300 / 200 / 200.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.cl import selection
from jax_cavs.core import hostpass, steps, xla
from jax_cavs.core import strategy as base
from jax_cavs.core.memory import ReplayMemory
from jax_cavs.problems.av_cil import exemplars, losses


def icarl_distillation(student, teacher, old, weights) -> jnp.ndarray:
    """mean over real rows and old classes of ``BCE_logits(σ(z), σ(z°))`` (module doc)."""
    x, y = jax.nn.sigmoid(student), jax.nn.sigmoid(teacher)
    bce = jax.nn.softplus(x) - x * y
    cells = weights[:, None] * old[None, :]
    return jnp.sum(bce * cells) / jnp.maximum(jnp.sum(cells), 1.0)


def herding_with_replacement(features: np.ndarray, count: int) -> np.ndarray:
    """The code's herding picks (row indices, repeats allowed) of features [n, C] as given
    (the caller normalises): ``min(count, n)`` picks, ties to the earliest row within
    ``selection.HERDING_TIE_TOLERANCE``."""
    features = np.asarray(features, np.float64)
    picks: list[int] = []
    if not features.shape[0]:
        return np.asarray(picks, np.int64)
    mean, running = features.mean(axis=0), np.zeros(features.shape[1])
    for k in range(1, min(count, features.shape[0]) + 1):
        distances = np.linalg.norm(mean - (running + features) / k, axis=1)
        best = int(np.argmax(distances <= distances.min() + selection.HERDING_TIE_TOLERANCE))
        picks.append(best)
        running += features[best]
    return np.asarray(picks, np.int64)


@functools.lru_cache(maxsize=None)
def _features_fn(problem):
    def features(params, batch_stats, batch):
        outputs, _ = problem.apply(steps.variables(params, batch_stats), batch, train=False)
        return {"feature": losses.l2_normalize(outputs.features["fused"]),
                "label": batch["label"]}

    return xla.jit(features)


def clip_features(state, ctx, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(records [n], φ [n, C], labels [n]) of the distinct clips of ``ids`` (one eval pass
    over the training split, ``core.hostpass``: the same on every process)."""
    fn = _features_fn(ctx.problem)
    out = hostpass.collect(
        lambda batch: fn(state.params, state.batch_stats, ctx.device_batch(batch)),
        ctx.batches(np.unique(np.asarray(ids, np.int64)), labels="seen"))
    return out["ids"], out["feature"].astype(np.float64), out["label"]


def herded_exemplars(state, ctx, budget: int, with_replacement: bool
                     ) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({class: picked records, in order}, class means [K, C]) after task ``ctx.task``."""
    m = exemplars.per_class(budget, int(np.sum(ctx.task.seen)))
    chosen = {int(c): state.memory.ids_of_class(int(c))[:m]
              for c in np.flatnonzero(ctx.task.old)}
    kept = np.concatenate([np.asarray(ctx.train_indices, np.int64), *chosen.values()])
    ids, features, labels = clip_features(state, ctx, kept)
    rows = {int(i): r for r, i in enumerate(ids)}
    herd = herding_with_replacement if with_replacement else selection.herding_order
    for c in ctx.task.classes:
        members = np.flatnonzero(labels == c)
        chosen[int(c)] = ids[members[herd(features[members], m)]]
    means = np.zeros((len(ctx.task.seen), features.shape[1]), np.float32)
    for c, picks in chosen.items():
        if len(picks):
            means[c] = features[[rows[int(i)] for i in picks]].mean(axis=0)
    return chosen, means


def sequence_memory(capacity: int, num_classes: int, chosen: Mapping[int, np.ndarray]
                    ) -> ReplayMemory:
    """A memory with one slot per pick (repeats kept), classes in order, picks in order."""
    ids, classes = selection.flatten(chosen)
    if len(ids) > capacity:
        raise ValueError(f"{len(ids)} exemplars exceed the memory's {capacity} slots "
                         f"(config field strategy.memory_size).")
    slots = np.full((capacity,), -1, np.int32)
    slots[:len(ids)] = ids
    tags = np.zeros((capacity, num_classes), bool)
    tags[np.arange(len(ids)), classes] = True
    return ReplayMemory.empty(capacity, num_classes).replace(
        ids=jnp.asarray(slots), tags=jnp.asarray(tags),
        valid=jnp.asarray(np.arange(capacity) < len(ids)))


@dataclasses.dataclass(frozen=True)
class HerdedExemplars(base.Strategy):
    """The herded memory and NME means of iCaRL and AFC (module docstring).

    Attributes:
      memory_size: |M|, the total exemplar budget.
      herding_with_replacement: the code's herding (True) or iCaRL's distinct picks.
    """

    memory_size: int = 340
    herding_with_replacement: bool = True

    def memory_capacity(self, num_classes: int) -> int:
        return self.memory_size

    def with_class_means(self, state, means: np.ndarray):
        """``state`` with the model's NME means set (unchanged without an NME head)."""
        if "nme" not in state.params:
            return state
        nme = {**state.params["nme"], "class_means": jnp.asarray(means)}
        return state.replace(params={**state.params, "nme": nme})

    def before_validation(self, state, ctx):
        """The learner with the NME means of its current features (the code's per-epoch
        exemplar pass before validating); unchanged without an NME head."""
        if "nme" not in state.params:
            return state
        _, means = herded_exemplars(state, ctx, self.memory_size, self.herding_with_replacement)
        return self.with_class_means(state, means)

    def end_task(self, state, ctx):
        chosen, means = herded_exemplars(state, ctx, self.memory_size,
                                         self.herding_with_replacement)
        memory = sequence_memory(state.memory.capacity, len(ctx.task.seen), chosen)
        return self.with_class_means(state.replace(memory=memory), means)


@base.register
@dataclasses.dataclass(frozen=True)
class ICaRL(HerdedExemplars):
    name = "icarl"
    uses_teacher = True

    def loss(self, state, batch, student, teacher, rng):
        ce = self.problem.loss(student, batch, state.seen)
        kd = jnp.where(state.task > 0, icarl_distillation(student.logits, teacher.logits,
                                                          state.old, batch["valid"]), 0.0)
        return ce + kd, {"ce": ce, "kd": kd}
