"""AV-CIL's loss terms as the authors' code computes them (spec_family §A4), on static shapes.

A train batch holds N rows: the current task's clips, then the exemplar clips
(``batch["is_memory"]`` = 1), with ``weights`` 0 on padding rows (fewer exemplars than the
exemplar batch). Every mean below runs over the real rows only, so a padded batch gives what
the code computes on its smaller batch [AVCIL-code ours/train_incremental_ours.py]:

* ``separated_ce`` (SS-CE, l. 166-174): current rows' CE over the current task's classes,
  exemplar rows' CE over the old classes, ``(B_c L_cur + B_e L_prev) / N``, i.e. the mean of
  the rows' own CE.
* ``task_kd`` (TKD, l. 176-183): Σ over the old tasks s of T² · mean_i KL(softmax(z^old_{i,C_s}
  / T) ‖ softmax(z_{i,C_s} / T)), T = 2, over all N rows; the current task takes no part
  (the paper's eq 13 sums to t, the code to t-1).
* ``instance_contrastive`` (I-AVSS, ``cal_contrastive_loss`` l. 45-50): S = â v̂ᵀ / τ,
  ``-mean_i log softmax_j(S_i)_i`` (audio to visual only).
* ``class_contrastive`` (C-AVSS, ``class_contrastive_loss`` l. 53-66): P_ij = [y_i = y_j],
  ``-mean_i mean_j P_ij log softmax_j(S_i)_j``: the positives' log-probabilities summed and
  divided by N, not by |P_i| (the code; its commented alternative divides by |P_i|, ``per_positive``).
* ``attention_distillation`` (VAD, l. 148-160): over the exemplar rows, Σ_{l,c} KL(w^old ‖
  w^new) of the spatial maps (distributions over the S patches) and Σ_c of the temporal maps
  (over the L frames), each summed and divided by B_e; ``λ Dist_spa + (1 − λ) Dist_tem``. The
  code's ``F.kl_div(new.log(), old, 'sum')`` is KL(old ‖ new); ``log`` of a probability that
  underflowed to 0 is clipped at float32's smallest normal instead of giving inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e9
TINY = float(jnp.finfo(jnp.float32).tiny)


def _mean(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """Σ w·v / Σ w (0 when no row is real)."""
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def row_ce(logits: jnp.ndarray, labels: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """float [N]: each row's CE with the softmax over its live ``classes`` (bool [K] or
    [N, K])."""
    logp = jax.nn.log_softmax(jnp.where(classes, logits, NEG_INF), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def masked_ce(logits, labels, classes, weights) -> jnp.ndarray:
    """Mean CE over the real rows, softmax over ``classes`` (fine-tuning, the first task)."""
    return _mean(row_ce(logits, labels, classes), weights)


def separated_ce(logits, labels, is_memory, current, old, weights) -> jnp.ndarray:
    """SS-CE: current rows over ``current`` classes, exemplar rows over ``old`` ones."""
    classes = jnp.where(is_memory[:, None] > 0, old[None, :], current[None, :])
    return _mean(row_ce(logits, labels, classes), weights)


def task_kd(student, teacher, task_of_class, old, weights, temperature: float = 2.0
            ) -> jnp.ndarray:
    """TKD: per old task, KL of the teacher's tempered softmax to the student's, · T².

    Args:
      student, teacher: logits [N, K]; task_of_class: int [K] the task that added each class;
      old: bool [K] the classes of the old tasks; weights: float [N].
    """
    num_classes = student.shape[-1]
    group = (task_of_class[None, :] == jnp.arange(num_classes)[:, None]) & old[None, :]  # [G, K]

    def group_log_softmax(logits):
        scaled = jnp.where(group[None], logits[:, None, :] / temperature, NEG_INF)  # [N, G, K]
        return scaled - jax.nn.logsumexp(scaled, axis=-1, keepdims=True)

    log_q, log_p = group_log_softmax(teacher), group_log_softmax(student)
    kl = jnp.sum(jnp.where(group[None], jnp.exp(log_q) * (log_q - log_p), 0.0), axis=(1, 2))
    return temperature ** 2 * _mean(kl, weights)


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """``F.normalize``: x / max(‖x‖, eps) over the last axis."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _similarity_log_softmax(audio, visual, weights, temperature):
    """log softmax_j(â_i · v̂_j / τ) over the real columns j: [N, N]."""
    scores = l2_normalize(audio) @ l2_normalize(visual).T / temperature
    return jax.nn.log_softmax(jnp.where(weights[None, :] > 0, scores, NEG_INF), axis=-1)


def instance_contrastive(audio, visual, weights, temperature: float = 0.05) -> jnp.ndarray:
    """I-AVSS: each clip's audio feature should pick its own visual feature."""
    log_prob = _similarity_log_softmax(audio, visual, weights, temperature)
    return -_mean(jnp.diagonal(log_prob), weights)


def class_contrastive(audio, visual, labels, weights, temperature: float = 0.05,
                      per_positive: bool = False) -> jnp.ndarray:
    """C-AVSS: the visual features of the same class are all positives (code: sum / N)."""
    log_prob = _similarity_log_softmax(audio, visual, weights, temperature)
    positive = (labels[:, None] == labels[None, :]) & (weights[None, :] > 0)
    summed = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=-1)
    divisor = (jnp.sum(positive, axis=-1) if per_positive
               else jnp.broadcast_to(jnp.sum(weights > 0), summed.shape))
    return -_mean(summed / jnp.maximum(divisor, 1), weights)


def _kl(old: jnp.ndarray, new: jnp.ndarray, axis: int) -> jnp.ndarray:
    """KL(old ‖ new) over ``axis`` of two probability maps (torch's kl_div on ``new.log()``)."""
    safe = lambda p: jnp.log(jnp.maximum(p, TINY))  # noqa: E731
    return jnp.sum(jnp.where(old > 0, old * (safe(old) - safe(new)), 0.0), axis=axis)


def attention_distillation(spatial, old_spatial, temporal, old_temporal, exemplar_weights,
                           lam: float = 0.5) -> jnp.ndarray:
    """VAD: ``λ Dist_spa + (1 − λ) Dist_tem`` over the exemplar rows.

    Args:
      spatial, old_spatial: [N, L, S, C] (softmax over S); temporal, old_temporal: [N, L, C]
        (softmax over L); exemplar_weights: float [N], 1 on the real exemplar rows.
    """
    rows = jnp.maximum(jnp.sum(exemplar_weights), 1.0)
    spa = jnp.sum(_kl(old_spatial, spatial, axis=2).sum(axis=(1, 2)) * exemplar_weights) / rows
    tem = jnp.sum(_kl(old_temporal, temporal, axis=1).sum(axis=1) * exemplar_weights) / rows
    return lam * spa + (1.0 - lam) * tem
