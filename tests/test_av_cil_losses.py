"""AV-CIL's loss terms against numpy transcriptions of the authors' code
(ours/train_incremental_ours.py: CE_loss, cal_contrastive_loss, class_contrastive_loss, the
SS-CE / TKD block l. 162-183 and the F.kl_div attention distillation l. 148-160), on
hand-made tensors: the code's batches are unpadded, ours carry padding rows that must change
nothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cavs.problems.av_cil import losses
from jax_cavs.problems.av_cil.model import AVCILNet

RTOL = 1e-5  # float32 sums of O(10) terms of magnitude O(1): ~10 ulps


def log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def softmax(x, axis=-1):
    return np.exp(log_softmax(x, axis))


def ce_loss(logits, labels):
    """CE_loss: -mean(sum(log_softmax(logits) * one_hot))."""
    return -np.mean(log_softmax(logits)[np.arange(len(labels)), labels])


def normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@pytest.fixture
def batch():
    """k = 3 classes per task, second task (old 0-2, current 3-5): 4 current rows, 2
    exemplar rows, then 2 padding rows (garbage values, valid 0)."""
    rng = np.random.default_rng(0)
    k, n_c, n_e, pad = 3, 4, 2, 2
    n = n_c + n_e + pad
    return dict(k=k, n_c=n_c, n_e=n_e, n=n,
                logits=rng.normal(size=(n, 9)).astype(np.float32) * 2,
                old_logits=rng.normal(size=(n, 9)).astype(np.float32) * 2,
                labels=np.array([3, 5, 4, 3, 0, 2, 1, 1], np.int32),
                is_memory=np.array([0, 0, 0, 0, 1, 1, 1, 0], np.float32),
                valid=np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32),
                audio=rng.normal(size=(n, 5)).astype(np.float32),
                visual=rng.normal(size=(n, 5)).astype(np.float32))


def masks(k, tasks_done, num_classes=9):
    current = np.zeros(num_classes, bool)
    current[tasks_done * k:(tasks_done + 1) * k] = True
    old = np.zeros(num_classes, bool)
    old[:tasks_done * k] = True
    return current, old


def test_separated_ce_is_the_codes_weighted_pair(batch):
    b = batch
    current, old = masks(b["k"], 1)
    got = losses.separated_ce(b["logits"], b["labels"], b["is_memory"], current, old, b["valid"])
    n_c, n_e = b["n_c"], b["n_e"]
    cur = ce_loss(b["logits"][:n_c, 3:6], b["labels"][:n_c] % b["k"])
    prev = ce_loss(b["logits"][n_c:n_c + n_e, :3], b["labels"][n_c:n_c + n_e])
    np.testing.assert_allclose(got, (cur * n_c + prev * n_e) / (n_c + n_e), rtol=RTOL)


def test_task_kd_sums_the_old_tasks_only(batch):
    """Third task: old tasks 0 and 1; the current task (6-8) takes no part."""
    b = batch
    task_of_class = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2], np.int32)
    _, old = masks(b["k"], 2)
    got = losses.task_kd(b["logits"], b["old_logits"], task_of_class, old, b["valid"], 2.0)
    real = slice(0, b["n_c"] + b["n_e"])
    want = 0.0
    for s in range(2):
        cols = slice(s * 3, (s + 1) * 3)
        q = softmax(b["old_logits"][real, cols] / 2)
        logp = log_softmax(b["logits"][real, cols] / 2)
        want += np.sum(q * (np.log(q) - logp)) / q.shape[0] * 4  # batchmean · T²
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_contrastive_terms_follow_the_code(batch):
    b = batch
    real = slice(0, b["n_c"] + b["n_e"])
    a, v, y = normalize(b["audio"][real]), normalize(b["visual"][real]), b["labels"][real]
    score = a @ v.T / 0.05
    want_i = ce_loss(score, np.arange(len(y)))
    p = (y[:, None] == y[None, :]).astype(np.float32)
    want_c = -np.mean(np.mean(log_softmax(score) * p, axis=-1))  # sum / N, as coded
    want_c_eq7 = -np.mean(np.sum(log_softmax(score) * p, -1) / p.sum(-1))
    np.testing.assert_allclose(
        losses.instance_contrastive(b["audio"], b["visual"], b["valid"], 0.05), want_i,
        rtol=RTOL)
    np.testing.assert_allclose(
        losses.class_contrastive(b["audio"], b["visual"], b["labels"], b["valid"], 0.05),
        want_c, rtol=RTOL)
    np.testing.assert_allclose(
        losses.class_contrastive(b["audio"], b["visual"], b["labels"], b["valid"], 0.05,
                                 per_positive=True), want_c_eq7, rtol=RTOL)


def test_attention_distillation_is_kl_old_to_new_on_exemplars():
    rng = np.random.default_rng(1)
    n, L, S, C = 5, 2, 3, 4
    spa = softmax(rng.normal(size=(n, L, S, C)), axis=2).astype(np.float32)
    old_spa = softmax(rng.normal(size=(n, L, S, C)), axis=2).astype(np.float32)
    tem = softmax(rng.normal(size=(n, L, C)), axis=1).astype(np.float32)
    old_tem = softmax(rng.normal(size=(n, L, C)), axis=1).astype(np.float32)
    exemplar = np.array([0, 0, 1, 1, 0], np.float32)  # rows 2, 3 are the exemplars
    rows = [2, 3]
    # F.kl_div(new.log(), old, reduction='sum') over the code's transposed, flattened maps.
    kl_spa = np.sum(old_spa[rows] * (np.log(old_spa[rows]) - np.log(spa[rows]))) / 2
    kl_tem = np.sum(old_tem[rows] * (np.log(old_tem[rows]) - np.log(tem[rows]))) / 2
    got = losses.attention_distillation(spa, old_spa, tem, old_tem, exemplar, lam=0.3)
    np.testing.assert_allclose(got, 0.3 * kl_spa + 0.7 * kl_tem, rtol=RTOL)
    same = losses.attention_distillation(spa, spa, tem, tem, exemplar, lam=0.3)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_model_attention_matches_a_numpy_transcription():
    """AVCILNet's audio-visual path against the equations of spec §A3 in numpy."""
    rng = np.random.default_rng(2)
    B, L, S, D = 2, 3, 4, 6
    audio = rng.normal(size=(B, 5)).astype(np.float32)
    visual = rng.normal(size=(B, L * S, D)).astype(np.float32)
    model = AVCILNet(num_classes=7, dim=8, num_frames=L)
    params = model.init(jax.random.key(0), audio, visual)["params"]
    logits, feats = model.apply({"params": params}, audio, visual)

    def lin(name, x):
        p = jax.tree_util.tree_map(np.asarray, params)
        p = p["attention"][name] if name.startswith("attn") else p[name]
        return x @ p["kernel"] + p["bias"]

    a = np.tanh(lin("attn_audio_proj", audio))
    grid = visual.reshape(B, L, S, D)
    v = np.tanh(lin("attn_visual_proj", grid))
    w_spa = softmax(v * a[:, None, None, :], axis=2)
    z = (w_spa * v).sum(2)
    w_tem = softmax(z * a[:, None, :], axis=1)
    p = (w_tem * (w_spa * grid).sum(2)).sum(1)
    h = np.maximum(lin("audio_proj", audio), 0) + np.maximum(lin("visual_proj", p), 0)
    np.testing.assert_allclose(feats["spatial"], w_spa, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["temporal"], w_tem, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, lin("classifier", h), rtol=1e-5, atol=1e-5)
    # Visual only: the mean of every token; audio only: no visual path at all.
    v_logits, v_feats = AVCILNet(7, "visual", 8, L).apply(
        {"params": {k: params[k] for k in ("visual_proj", "classifier")}}, audio, visual)
    np.testing.assert_allclose(v_feats["fused"],
                               np.maximum(lin("visual_proj", visual.mean(1)), 0), rtol=1e-5,
                               atol=1e-6)
    assert "spatial" not in v_feats and "audio" not in v_feats
    assert jnp.all(jnp.isfinite(v_logits))
