"""Train-step and evaluation throughput of the AVS model (prints figures and ratios).

  python benchmarks/train_step.py                 # default CPU model and paper-size model
  python benchmarks/train_step.py --only default  # just the small model
  python benchmarks/train_step.py --devices 8     # data-parallel over 8 (simulated) devices
  python benchmarks/train_step.py --only paper --breakdown   # per part, GFLOP/s, % of peak

The paper-size model is the official AVSBench semantic model: ResNet-50 + 4 TPAVI stages at
224x224, batch 2 clips x 5 frames (10 frames per step, as in the PyTorch reference), Adam.
The official PyTorch code (dense TPAVI affinity, torch 2.13, 2 threads, fp32) takes
``--torch_step_s`` per train step and ``--torch_eval_s`` per inference frame (defaults: the
medians measured on our 2-core CPU, issue 18); the ratios compare against them. jax_cavs
uses the exact factorised TPAVI (``models/fusion/tpavi.py``). Every jit compiles with the
project's XLA options (``core/xla.py``); ``JAX_CAVS_XLA_OPTIONS`` overrides them for A/B runs.
The peak RSS printed is the process's (``ru_maxrss``) after the last model timed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time



def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("default", "paper"), default=None)
    parser.add_argument("--devices", type=int, default=1,
                        help="simulated CPU devices (sets XLA_FLAGS before jax loads)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    parser.add_argument("--breakdown", action="store_true",
                        help="time each part forward and backward, with GFLOP/s and % of peak")
    parser.add_argument("--torch_step_s", type=float, default=20.0,
                        help="official PyTorch train step, s (10 frames 224x224, 2-core CPU)")
    parser.add_argument("--torch_eval_s", type=float, default=0.70,
                        help="official PyTorch inference, s per frame")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ml_collections

    import step_parts
    from jax_cavs.core import optim, parallel, xla
    from jax_cavs.core import steps as train_lib
    from jax_cavs.core.state import create_state
    from jax_cavs.problems.cavs import config as config_base
    from jax_cavs.problems.cavs import strategies
    from jax_cavs.problems.cavs.model import build_model
    from jax_cavs.problems.cavs.problem import CAVSProblem

    def make_batch(clips, frames, size, num_classes, rng):
        return {
            "frames": rng.standard_normal((clips, frames, size, size, 3)).astype(np.float32),
            "audio": rng.standard_normal((clips, frames, 96, 64)).astype(np.float32),
            "labels": rng.integers(0, num_classes, (clips, frames, size, size)).astype(np.int32),
            "label_mask": np.ones((clips, frames), np.float32),
            "frame_mask": np.ones((clips, frames), np.float32),
            "index": np.arange(clips, dtype=np.int32),
            "is_memory": np.zeros((clips,), bool),
            "valid": np.ones((clips,), np.float32),
        }

    def timed(fn, steps):
        out = fn()                       # compile + warm-up
        jax.block_until_ready(out)
        start = time.perf_counter()
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / steps

    def bench(name, model_cfg, num_classes, size, frames, clips):
        config = config_base.base_config("finetune", config_base.parse_arg(None))
        problem = CAVSProblem(build_model(ml_collections.ConfigDict(
            {**model_cfg.to_dict(), "num_classes": num_classes})))
        model = problem.model
        strategy = strategies.get_strategy("finetune", problem=problem)
        mesh = parallel.make_mesh(config.parallel)
        clips = -(-clips // jax.device_count()) * jax.device_count()  # splits over the devices
        batch = make_batch(clips, frames, size, num_classes, np.random.default_rng(0))
        dummy = (jnp.zeros((1, frames, size, size, 3)), jnp.zeros((1, frames, 96, 64)),
                 jnp.ones((1, frames)))
        variables = xla.jit(lambda r: model.init(r, *dummy, train=False))(jax.random.key(0))
        tx = optim.build_optimizer(config.optimizer, problem.param_roles()["frozen"])
        state = create_state(variables, tx, num_classes, 0, False, {})
        state = state.replace(seen=jnp.ones((num_classes,), bool))
        state = parallel.shard_state(state, mesh)
        step = parallel.jit_train_step(train_lib.make_train_step(problem, strategy), mesh,
                                       state)
        evaluate = parallel.jit_eval_step(train_lib.make_eval_step(problem), mesh, state)
        stats = jax.device_put(problem.evaluator.init(), parallel.replicated(mesh))
        device_batch = parallel.shard_batch(batch, mesh)
        rng = jax.random.key(0)
        holder = {"state": state}

        def train_once():
            holder["state"], metrics = step(holder["state"], device_batch, rng)
            return metrics["loss"]

        step_s = timed(train_once, args.steps)
        step_gflop = step.lower(holder["state"], device_batch, rng).compile().cost_analysis().get(
            "flops", 0.0) / 1e9
        seen = jnp.ones((num_classes,), bool)
        eval_s = timed(lambda: evaluate(holder["state"].params, holder["state"].batch_stats,
                                        seen, device_batch, stats), args.steps)
        n_frames = clips * frames
        params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
        print(f"{name}: {params / 1e6:.2f}M params, {clips} clips x {frames} frames "
              f"@{size}x{size}, {jax.device_count()} device(s)")
        print(f"  train step      {step_s:8.3f} s   {n_frames / step_s:8.1f} frames/s   "
              f"{step_gflop:7.1f} GFLOP (XLA), {step_gflop / step_s:6.1f} GFLOP/s = "
              f"{100 * step_gflop / step_s / peak:.0f}% of the GEMM peak")
        print(f"  evaluation      {eval_s / n_frames:8.4f} s/frame {n_frames / eval_s:8.1f} "
              f"frames/s")
        if args.breakdown:
            trained = holder["state"]  # the step donated the initial variables
            step_parts.print_breakdown(step_parts.breakdown(
                model, {"params": trained.params, "batch_stats": trained.batch_stats}, batch,
                tx, trained.opt_state), step_s, peak)
        print(f"  peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}"
              f" GiB")
        return step_s, eval_s / n_frames

    peak = step_parts.gemm_peak()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} host cores, "
          f"float32 GEMM peak {peak:.0f} GFLOP/s (4096^3), XLA options "
          f"{xla.compiler_options()}")
    if args.only in (None, "default"):
        config = config_base.base_config("finetune", config_base.parse_arg(None))
        bench("default (SynthAVS small)", config.model, 17, config.dataset.image_size, 5,
              config.train.batch_size)
    if args.only in (None, "paper"):
        config = config_base.base_config("finetune", config_base.parse_arg(None))
        paper = config.model.copy_and_resolve_references()
        paper.update(backbone_depth=50, backbone_width=1.0, neck_channels=256,
                     neck_dilations=(3, 6, 12, 18), tpavi_inter_channels=128, audio_width=1.0,
                     freeze_audio=True)
        step_s, eval_s = bench("paper size (ResNet-50 + TPAVI, AVSBench)", paper, 71, 224, 5, 2)
        print(f"  speed-up over the PyTorch reference (>1: faster): train step "
              f"{args.torch_step_s / step_s:.2f}x (reference {args.torch_step_s:.1f} s), "
              f"inference {args.torch_eval_s / eval_s:.2f}x (reference {args.torch_eval_s} "
              f"s/frame)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
