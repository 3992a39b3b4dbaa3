"""Per-part timing of the AVS train step, with XLA's FLOP counts and the machine's GEMM peak.

Used by ``train_step.py --breakdown``. Each part of ``AVSModel`` (backbone, audio, neck, TPAVI,
decoder), the loss and the optimiser update is jit'd alone on the inputs it sees in the
step (captured from one forward) and timed forward and forward+backward (the backward with
respect to its parameters and, where an earlier trainable part feeds it, its input). The
parts overlap nothing, so their sum approximates the whole step (XLA fuses across part
boundaries in the real step, so the sum is an upper bound). GFLOP/s = XLA's
``cost_analysis()['flops']`` of the part / its time.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.core import xla
from jax_cavs.models.audio.vggish import VGGish
from jax_cavs.models.backbones.resnet import ResNet
from jax_cavs.models.fusion.tpavi import TPAVI
from jax_cavs.models.heads.decoder import ProgressiveDecoder
from jax_cavs.models.heads.neck import DilatedSumNeck
from jax_cavs.problems.cavs.losses import segmentation
from jax_cavs.problems.cavs.model import MIN_HEAD_CHANNELS


def timed(fn: Callable, args: tuple, repeats: int) -> tuple[float, float]:
    """(seconds per call after one warm-up call, XLA's FLOPs of one call)."""
    jitted = xla.jit(fn)
    flops = jitted.lower(*args).compile().cost_analysis().get("flops", 0.0)
    jax.block_until_ready(jitted(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = jitted(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats, flops


def gemm_peak(size: int = 4096, repeats: int = 3) -> float:
    """Achieved GFLOP/s of a float32 [size, size] matmul: the roofline's compute peak."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
    seconds, _ = timed(lambda x, y: x @ y, (a, a), repeats)
    return 2 * size ** 3 / seconds / 1e9


def _with_grads(forward: Callable, wrt: tuple[int, ...]) -> Callable:
    """forward(*args) -> out, as a function returning out and the VJP of sum(out) in ``wrt``."""
    def both(*args):
        def scalar(*diff):
            full = list(args)
            for index, value in zip(wrt, diff):
                full[index] = value
            leaves = jax.tree_util.tree_leaves(forward(*full))
            return sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in leaves)
        return jax.value_and_grad(scalar, argnums=tuple(range(len(wrt))))(
            *(args[i] for i in wrt))
    return both


def breakdown(model, variables, batch, tx, opt_state, repeats: int = 2):
    """[(part, forward s, forward GFLOP, forward+backward s, fwd+bwd GFLOP)] of one step."""
    m = model
    params, stats = variables["params"], variables["batch_stats"]
    n, t = batch["frames"].shape[:2]
    frames = jnp.asarray(batch["frames"]).reshape(n * t, *batch["frames"].shape[2:])
    audio = jnp.asarray(batch["audio"]).reshape(n * t, *batch["audio"].shape[2:])
    mask = jnp.ones((n * t,), jnp.float32)
    backbone = ResNet(depth=m.backbone_depth, width=m.backbone_width, dtype=m.dtype)
    vggish = VGGish(width=m.audio_width, frozen=m.freeze_audio, dtype=m.dtype)
    necks = [DilatedSumNeck(m.neck_channels, tuple(m.neck_dilations), m.dtype)
             for _ in range(4)]
    tpavis = {s: TPAVI(m.tpavi_inter_channels, m.tpavi_group, m.dtype) for s in m.tpavi_stages}
    head = (m.neck_channels // 2, max(m.neck_channels // 8, MIN_HEAD_CHANNELS))
    decoder = ProgressiveDecoder(m.num_classes, head, m.dtype)

    def run_backbone(p, x):
        return backbone.apply({"params": p, "batch_stats": stats["backbone"]}, x, train=True,
                              mutable=["batch_stats"])[0]

    def run_audio(p, a):
        return vggish.apply({"params": p}, a)

    def run_neck(p, maps):
        return [neck.apply({"params": p[f"neck_{i}"]}, x, mask)
                for i, (neck, x) in enumerate(zip(necks, maps))]

    def run_tpavi(p, maps, emb):
        out = list(maps)
        for s, block in tpavis.items():
            f, _ = block.apply({"params": p[f"tpavi_{s}"], "batch_stats": stats[f"tpavi_{s}"]},
                               maps[s].reshape(n, t, *maps[s].shape[1:]), emb.reshape(n, t, -1),
                               train=True, mutable=["batch_stats"])[0]
            out[s] = f.reshape(n * t, *f.shape[2:])
        return out

    def run_decoder(p, maps):
        return decoder.apply({"params": p}, tuple(maps), mask)[0]

    def run_loss(logits):
        seen = jnp.ones((m.num_classes,), bool)
        labels = jnp.asarray(batch["labels"]).reshape(logits.shape[:-1])
        return jnp.mean(segmentation.masked_cross_entropy(logits, labels, seen))

    stages = xla.jit(run_backbone)(params["backbone"], frames)
    emb = xla.jit(run_audio)(params["audio_encoder"], audio)
    neck_params = {k: v for k, v in params.items() if k.startswith("neck_")}
    tpavi_params = {k: v for k, v in params.items() if k.startswith("tpavi_")}
    necked = xla.jit(run_neck)(neck_params, stages)
    fused = xla.jit(run_tpavi)(tpavi_params, necked, emb)
    logits = xla.jit(run_decoder)(params["decoder"], fused)
    audio_wrt = () if m.freeze_audio else (0,)
    parts = [
        ("backbone", run_backbone, (params["backbone"], frames), (0,)),
        ("audio", run_audio, (params["audio_encoder"], audio), audio_wrt),
        ("neck", run_neck, (neck_params, stages), (0, 1)),
        ("tpavi", run_tpavi, (tpavi_params, necked, emb), (0, 1) if m.freeze_audio else (0, 1, 2)),
        ("decoder", run_decoder, (params["decoder"], fused), (0, 1)),
        ("loss", run_loss, (logits,), (0,)),
    ]
    rows = []
    for name, forward, args, wrt in parts:
        fwd_s, fwd_flops = timed(forward, args, repeats)
        both_s, both_flops = (timed(_with_grads(forward, wrt), args, repeats) if wrt
                              else (fwd_s, fwd_flops))
        rows.append((name, fwd_s, fwd_flops / 1e9, both_s, both_flops / 1e9))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)

    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree_util.tree_map(jnp.add, params, updates), opt_state

    opt_s, opt_flops = timed(update, (grads, opt_state, params), repeats)
    rows.append(("optimiser", opt_s, opt_flops / 1e9, opt_s, opt_flops / 1e9))
    return rows


def print_breakdown(rows, step_s: float, peak: float) -> None:
    print(f"  per part (GEMM peak {peak:.0f} GFLOP/s; whole step {step_s:.2f} s):")
    print(f"    {'part':10s} {'fwd s':>7s} {'GF/s':>6s} {'fwd+bwd s':>10s} {'GFLOP':>7s} "
          f"{'GF/s':>6s} {'% peak':>6s} {'% step':>6s}")
    for name, fwd_s, fwd_gf, both_s, both_gf in rows:
        rate = both_gf / both_s
        print(f"    {name:10s} {fwd_s:7.3f} {fwd_gf / fwd_s:6.0f} {both_s:10.3f} {both_gf:7.1f} "
              f"{rate:6.0f} {100 * rate / peak:6.1f} {100 * both_s / step_s:6.1f}")
    total_s = sum(r[3] for r in rows)
    total_gf = sum(r[4] for r in rows)
    print(f"    {'sum':10s} {'':7s} {'':6s} {total_s:10.3f} {total_gf:7.1f} "
          f"{total_gf / total_s:6.0f} {100 * total_gf / total_s / peak:6.1f} "
          f"{100 * total_s / step_s:6.1f}")
