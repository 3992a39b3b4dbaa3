"""Per-pixel classification losses on channels-last logits with class masks.

Every function returns a per-pixel loss map ``[..., H, W]`` (0 on ignored pixels); reduce it
with ``jax_cavs.cl.reduce.masked_mean`` (mean over all pixels of annotated frames, the
MiB/PLOP convention, spec_cavs §5). Class masks are ``bool[K]`` over the K logits:
``seen`` (classes learned so far incl. background), ``old`` (classes seen before the current
task incl. background). Channels outside ``seen`` take no part in any softmax and get exactly
zero gradient. A label that names an unseen class contributes 0, like an ignored pixel (the
data pipeline never produces one; see ``jax_cavs.data``).

Terms:
* ``masked_cross_entropy``: CE with ignore 255 over the seen classes (FT, PLOP; spec §5.1).
* ``multilabel_bce``: LwF-MC's per-class BCE on one-hot targets (spec §5.4,
  [PLOP:utils/loss.py BCEWithLogitsLossWithIgnoreIndex, reduction 'none']).
* ``unbiased_cross_entropy``: MiB's UNCE (spec §5.5, [MiB/PLOP:utils/loss.py
  UnbiasedCrossEntropy]).
* ``avm_kl_loss``: AVSBench's audio/masked-visual matching KL (spec §3.5,
  [AVSB:loss.py A_MaskedV_SimmLoss with kl_flag]).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.data import IGNORE_INDEX
from jax_cavs.cl.reduce import masked_log_softmax, masked_logsumexp



def _gather_class(values: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """values[..., labels] for labels in [0, K); values [..., K], labels [...] -> [...].

    A select against the class index and a sum over K (exact: one term is non-zero), not
    ``take_along_axis``, whose backward is a scatter-add over the whole logit map (142 MB
    per paper-size step); the select's backward is another select.
    """
    classes = jnp.arange(values.shape[-1], dtype=labels.dtype)
    return jnp.sum(jnp.where(labels[..., None] == classes, values, 0), axis=-1)


def _valid_labels(labels: jnp.ndarray, seen: jnp.ndarray, ignore_index: int):
    """(labels clipped into [0, K), bool map of pixels whose label is a seen class)."""
    seen = jnp.asarray(seen)
    num_classes = seen.shape[-1]
    in_range = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    safe = jnp.where(in_range, labels, 0)
    return safe, in_range & seen[safe]


def masked_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, seen: jnp.ndarray,
                         ignore_index: int = IGNORE_INDEX) -> jnp.ndarray:
    """Cross-entropy over the seen classes, per pixel.

    ``-log softmax_seen(z)_y``; 0 where ``y == ignore_index`` (spec §5.1, PyTorch
    ``CrossEntropyLoss(ignore_index=255, reduction='none')`` on the first K_t channels).

    Args:
      logits: float [..., H, W, K].
      labels: int [..., H, W], values in [0, K) or ``ignore_index``.
      seen: bool [K].
      ignore_index: label of ignored pixels.

    Returns:
      float [..., H, W].
    """
    safe, valid = _valid_labels(labels, seen, ignore_index)
    log_probs = masked_log_softmax(logits, seen)
    return jnp.where(valid, -_gather_class(log_probs, safe), 0.0)


def multilabel_bce(logits: jnp.ndarray, labels: jnp.ndarray, seen: jnp.ndarray,
                   ignore_index: int = IGNORE_INDEX) -> jnp.ndarray:
    """LwF-MC classification term: ``Σ_{c∈seen} BCEWithLogits(z_c, onehot(y)_c)`` per pixel.

    Pixels with ``y == ignore_index`` have an all-zero target row in the reference and are
    multiplied by ``target.sum() = 0``, so they contribute 0 (spec §5.4).

    Args/shape: as ``masked_cross_entropy``. Returns float [..., H, W].
    """
    safe, valid = _valid_labels(labels, seen, ignore_index)
    targets = jax.nn.one_hot(safe, seen.shape[-1], dtype=logits.dtype)
    # BCEWithLogits(z, t) = softplus(z) - z * t, the numerically stable form.
    per_class = jax.nn.softplus(logits) - logits * targets
    return jnp.where(valid, jnp.sum(jnp.where(seen, per_class, 0.0), axis=-1), 0.0)


def unbiased_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, seen: jnp.ndarray,
                           old: jnp.ndarray, ignore_index: int = IGNORE_INDEX
                           ) -> jnp.ndarray:
    """MiB's unbiased cross-entropy (UNCE), per pixel (spec §5.5).

    Labels of old classes (``old[y]``, background included) are mapped to 0 and background's
    probability is the total probability of all old classes::

        log p~_0 = logsumexp_{old}(z) - logsumexp_{seen}(z)
        log p~_c = z_c - logsumexp_{seen}(z)          for c in seen \\ old
        loss     = -log p~_y,  0 where y == ignore_index

    Args:
      logits: float [..., H, W, K].
      labels: int [..., H, W].
      seen, old: bool [K], ``old`` ⊆ ``seen``, background in ``old``.
      ignore_index: label of ignored pixels.

    Returns:
      float [..., H, W].
    """
    safe, valid = _valid_labels(labels, seen, ignore_index)
    log_probs = masked_log_softmax(logits, seen)
    log_background = masked_logsumexp(logits, old) - masked_logsumexp(logits, seen)
    picked = jnp.where(jnp.asarray(old)[safe], log_background, _gather_class(log_probs, safe))
    return jnp.where(valid, -picked, 0.0)


def adaptive_avg_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float32 [out, in] averaging matrix of PyTorch ``AdaptiveAvgPool`` along one axis.

    Output cell i averages input cells ``[floor(i*in/out), ceil((i+1)*in/out))``.
    """
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def avm_kl_loss(logits: jnp.ndarray, audio_features: Sequence[jnp.ndarray],
                visual_maps: Sequence[jnp.ndarray], frame_weights: jnp.ndarray,
                seen: jnp.ndarray) -> jnp.ndarray:
    """AVSBench "AVM" audio / masked-visual matching loss with KL (spec §3.5).

    Per stage i and frame f::

        M      = 1[argmax_seen(z_f) != 0], no gradient, adaptive-avg-pooled to (h_i, w_i)
        v_i    = mean_{h,w}(relu(F_i) * M_i)                          [C]
        l_i,f  = KL(softmax(A_i,f) || softmax(v_i))
               = Σ_c softmax(A)_c (log softmax(A)_c - log softmax(v)_c)

    each stage's loss is ``Σ_f m_f l_i,f / Σ_f m_f`` and the result is the mean over stages
    ([AVSB:loss.py A_MaskedV_SimmLoss], ``norm_fea=False``, ``threshold=False``).

    DECISION: the object mask uses background index 0 as spec §3.5 states; the reference code
    compares with ``bg_idx = K - 1`` (the last class, the same off-by-one as its
    ``miou_noBg``). ``relu`` is applied here to the fused maps, mirroring the in-place ReLU of
    the reference decoder (spec §3.4); it is idempotent if the model already applied it.

    Args:
      logits: float [F, H, W, K] frame logits (F = N*T).
      audio_features: per stage float [F, C_i] (TPAVI's aligned audio ``a_fea``).
      visual_maps: per stage float [F, h_i, w_i, C_i] (post-TPAVI fused maps).
      frame_weights: float [F] (the annotated-frame flag m_f).
      seen: bool [K], classes the argmax runs over.

    Returns:
      float32 scalar.
    """
    if len(audio_features) != len(visual_maps) or not visual_maps:
        raise ValueError("avm_kl_loss: audio_features and visual_maps must be non-empty "
                         f"sequences of equal length, got {len(audio_features)} and "
                         f"{len(visual_maps)}.")
    prediction = jnp.argmax(jnp.where(seen, logits, -jnp.inf), axis=-1)
    object_mask = jax.lax.stop_gradient((prediction != 0).astype(jnp.float32))  # [F, H, W]
    weights = frame_weights.astype(jnp.float32)
    total_weight = jnp.sum(weights)
    safe_total = jnp.where(total_weight > 0, total_weight, 1.0)
    stage_losses = []
    for audio, visual in zip(audio_features, visual_maps):
        _, height, width, channels = visual.shape
        if audio.shape[-1] != channels:
            raise ValueError(f"avm_kl_loss: audio features have {audio.shape[-1]} channels "
                             f"but the visual map has {channels}; they must match.")
        pool_h = adaptive_avg_pool_matrix(object_mask.shape[1], height)
        pool_w = adaptive_avg_pool_matrix(object_mask.shape[2], width)
        pooled = jnp.einsum("hH,fHW,wW->fhw", pool_h, object_mask, pool_w)
        visual_vector = jnp.mean(jax.nn.relu(visual) * pooled[..., None], axis=(1, 2))
        log_audio = jax.nn.log_softmax(audio, axis=-1)
        log_visual = jax.nn.log_softmax(visual_vector, axis=-1)
        kl = jnp.sum(jnp.exp(log_audio) * (log_audio - log_visual), axis=-1)  # [F]
        stage_losses.append(jnp.sum(kl * weights) / safe_total)
    return jnp.where(total_weight > 0, jnp.mean(jnp.stack(stage_losses)), 0.0)
