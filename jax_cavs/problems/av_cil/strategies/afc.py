"""AFC (Kang et al., CVPR 2022, built on PODNet) as AV-CIL's authors run it for their Table 1
[AVCIL-code AFC/train_incremental_afc.py, model/layers.py, run_incremental_afc.sh].

**Classifier**: PODNet's local similarity classifier, 10 proxies per class (``heads``; the
model's ``head="lsc"``), trained with the NCA loss ``nca`` (l. 43-63). With η the
classifier's learnable scale and s_j its similarities over the seen classes::

    z_j = η s_j − max_k η s_k,   ℓ = −z_y + log(1 + Σ_{j≠y} e^{z_j})

(the positive's slot of the denominator holds e^0 = 1, as coded; the code's margin 0.6 is
subtracted from *every* class, so it cancels and is left out.) At every new task the code
builds a fresh ``SplitLSCLinear`` (l. 245-272): η restarts at 1, the old proxies are copied
and frozen (learning rate 0, no weight decay, l. 287-295; ``after_step`` restores them), and
the new classes' proxies are imprinted (``imprint_weights`` l. 66-128, ``prepare_task``): per
new class, k-means (k = 10) of the normalised features φ of its training clips under the
model entering the task, each centre times the mean norm of the old proxies. The teacher is
copied *before* imprinting (l. 257, 272): its new proxies are their random initialisation
and its η is 1.

**Importance-weighted discrepancy** (l. 334-356), from the second task on, per row i: the
gradient of the teacher's NCA loss (its logits over the seen classes, the batch labels) with
respect to the teacher's features (``retain_grad``, model l. 88-92) gives
I_m = ‖∂ℓ°/∂f°_m‖ for the pooled visual feature p, h^a and h^v (h = h^a + h^v, so the last
two are equal), normalised per row: w_m = I_m / Σ_m' I_m'. Then::

    L_disc = Σ_m mean_i w_{m,i} ‖f_{m,i}/‖f_{m,i}‖ − f°_{m,i}/‖f°_{m,i}‖‖
    L      = ℓ_NCA + λ_disc √(t+1) L_disc,      λ_disc = 0.5 (run_incremental_afc.sh)

(t the 0-based task; √(t+1) = √(n_seen / n_new), PODNet's adaptive factor). With one
modality L_disc is the plain mean distance of the fused features (l. 355-356). The norm's
gradient at 0 is 0 (torch's ``norm``: the first step of a task, learner = teacher), and a
row whose importances are all 0 weighs 0 (the code would divide by 0).

**Exemplars and NME** as iCaRL's code (``icarl.HerdedExemplars``; the AFC code repeats
``gen_step_exemplar_set``, l. 147-236): NME herds and validates after every epoch
(l. 372-375), LSC herds once with the best model (l. 445-449) and validates on the
classifier. Paper settings: those of iCaRL (``icarl`` docstring), epochs K-S audio 300.

Departures from the original AFC recorded here: the code's importance is per clip and per
modality, from the frozen teacher during training, where AFC accumulates class-wise channel
importance after each task and weights PODNet's spatial and flat distillation channel by
channel; no class-balanced finetuning (the code has none); its margin has no effect (above).
sklearn's ``KMeans(10)`` (v1.2: k-means++, n_init 10, unseeded) is ``kmeans`` below, seeded
by the task's ``ctx.rng``; a class with fewer clips than proxies (sklearn raises) repeats its
clips as centres.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.core import strategy as base
from jax_cavs.problems.av_cil import heads, losses
from jax_cavs.problems.av_cil.strategies.icarl import HerdedExemplars, clip_features

MODALITY_FEATURES = ("pooled_visual", "audio", "visual")


def _mean(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """Σ w·v / Σ w over the real rows."""
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def nca_rows(similarities, labels, scale, classes) -> jnp.ndarray:
    """ℓ [N] of the code's NCA (module docstring) over the live ``classes`` (bool [K]);
    ``scale``: η, a scalar or [N]."""
    z = jnp.where(classes, jnp.reshape(scale, (-1, 1)) * similarities, losses.NEG_INF)
    z = z - jnp.max(z, axis=-1, keepdims=True)
    target = jax.nn.one_hot(labels, similarities.shape[-1], dtype=bool)
    positive = jnp.sum(jnp.where(target, z, 0.0), axis=-1)
    others = jnp.sum(jnp.where(classes & ~target, jnp.exp(z), 0.0), axis=-1)
    return jnp.log1p(others) - positive


def safe_norm(x: jnp.ndarray) -> jnp.ndarray:
    """‖x‖ over the last axis, with gradient 0 at 0 (torch's ``norm``)."""
    squared = jnp.sum(x * x, axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def feature_importance(old_params, teacher, labels, classes) -> dict[str, jnp.ndarray]:
    """w_m [N] of p, h^a, h^v from the teacher's NCA gradients (module docstring)."""
    head = old_params["classifier"]
    fused = teacher.features["fused"]
    grad = jax.grad(lambda h: jnp.sum(nca_rows(heads.lsc_similarities(h, head["proxies"]),
                                               labels, head["factor"], classes)))(fused)
    # h^v = ReLU(p U + b): ∂ℓ/∂p = (∂ℓ/∂h ⊙ [h^v > 0]) Uᵀ.
    kernel = old_params["visual_proj"]["kernel"]
    grad_pooled = (grad * (teacher.features["visual"] > 0)) @ kernel.T
    norms = {"pooled_visual": jnp.linalg.norm(grad_pooled, axis=-1),
             "audio": jnp.linalg.norm(grad, axis=-1), "visual": jnp.linalg.norm(grad, axis=-1)}
    total = sum(norms.values())
    return {m: jax.lax.stop_gradient(jnp.where(total > 0, n / jnp.where(total > 0, total, 1.0),
                                               0.0)) for m, n in norms.items()}


def discrepancy(student, teacher, importance, weights) -> jnp.ndarray:
    """L_disc: Σ_m mean_i w_{m,i} ‖f̂_{m,i} − f̂°_{m,i}‖ (``importance`` None: the fused
    feature, unweighted)."""
    def distance(name):
        return safe_norm(losses.l2_normalize(student.features[name])
                         - losses.l2_normalize(teacher.features[name]))

    if importance is None:
        return _mean(distance("fused"), weights)
    return sum(_mean(importance[m] * distance(m), weights) for m in MODALITY_FEATURES)


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 10,
           max_iter: int = 300, tol: float = 1e-4) -> np.ndarray:
    """k centres [k, C] of points [n, C]: k-means++ seeding, Lloyd iterations until the
    centres move less than ``tol`` × the mean feature variance, the best of ``n_init`` runs
    by inertia (sklearn's defaults); with n <= k the points themselves, repeated."""
    n = points.shape[0]
    if n == 0:
        raise ValueError("k-means of a class without training clips.")
    if n <= k:
        return points[np.arange(k) % n]
    squared = lambda c: ((points[:, None, :] - c[None]) ** 2).sum(-1)  # noqa: E731
    threshold = tol * np.mean(np.var(points, axis=0))
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = points[[rng.integers(n)]]
        while len(centres) < k:
            d2 = squared(centres).min(axis=1)
            pick = rng.choice(n, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(n)
            centres = np.concatenate([centres, points[[pick]]])
        for _ in range(max_iter):
            assign = squared(centres).argmin(axis=1)
            moved = np.stack([points[assign == j].mean(axis=0) if np.any(assign == j)
                              else centres[j] for j in range(k)])
            shift, centres = ((moved - centres) ** 2).sum(), moved
            if shift <= threshold:
                break
        inertia = squared(centres).min(axis=1).sum()
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


@base.register
@dataclasses.dataclass(frozen=True)
class AFC(HerdedExemplars):
    """Attributes beyond the herded memory's: lam_disc (λ_disc, 0.5 in the run scripts)."""

    name = "afc"
    uses_teacher = True
    first_task_objective = "afc_nca"

    lam_disc: float = 0.5

    def begin_task(self, state, task):
        """η restarts at 1 for the learner and the teacher (the code's fresh classifier)."""
        head = {**state.params["classifier"],
                "factor": jnp.ones_like(state.params["classifier"]["factor"])}
        return super().begin_task(state.replace(params={**state.params, "classifier": head}),
                                  task)

    def prepare_task(self, state, ctx):
        """Imprints the new classes' proxies (from the second task on)."""
        if not ctx.task.index:
            return state
        _, features, labels = clip_features(state, ctx, ctx.train_indices)
        proxies = np.array(state.params["classifier"]["proxies"])  # [D, P, K]
        scale = np.linalg.norm(proxies[:, :, ctx.task.old], axis=0).mean()
        for c in ctx.task.classes:
            centres = kmeans(features[labels == c], proxies.shape[1], ctx.rng)
            proxies[:, :, c] = (centres * scale).T
        head = {**state.params["classifier"], "proxies": jnp.asarray(proxies)}
        return state.replace(params={**state.params, "classifier": head})

    def after_step(self, state, grads, previous_params):
        """The old classes' proxies do not move (the code's learning rate 0 for them)."""
        head = state.params["classifier"]
        kept = jnp.where(state.old, previous_params["classifier"]["proxies"], head["proxies"])
        return state.replace(params={**state.params, "classifier": {**head, "proxies": kept}})

    def loss(self, state, batch, student, teacher, rng):
        if "nca_scale" not in student.features:
            raise ValueError("strategy afc needs AFC's classifier: config field "
                             "model.head='lsc'.")
        weights = batch["valid"]
        nca = _mean(nca_rows(student.logits, batch["label"],
                                    student.features["nca_scale"], state.seen), weights)

        def later_task(_):
            importance = None
            if "pooled_visual" in student.features:
                importance = feature_importance(state.old_params, teacher, batch["label"],
                                                state.seen)
            return discrepancy(student, teacher, importance, weights)

        disc = jax.lax.cond(state.task > 0, later_task, lambda _: jnp.zeros(()), None)
        factor = self.lam_disc * jnp.sqrt(state.task + 1.0)
        return nca + factor * disc, {"nca": nca, "disc": disc}
