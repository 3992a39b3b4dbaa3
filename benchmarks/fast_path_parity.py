"""The paper-topology model's first train step with every fast path against the plain step.

  python benchmarks/fast_path_parity.py            # ~3 minutes on a 2-core CPU

Three first steps of the paper model (ResNet-50, a 256-wide neck with dilations 3/6/12/18,
four TPAVI stages, full-width frozen VGGish, 71 classes) at 64x64 (maps 16/8/4/2, so every
padding-only tap pattern of the neck occurs), one clip of 5 frames, SGD (new parameters are
linear in the gradients):

  fast   the project's code, compiled with its XLA options (``core/xla.py``);
  plain  the replaced formulations put back (gather-pair upsampling, ``take_along_axis``
         class gather, full dilated neck convs), same XLA options;
  ynn    plain, compiled with XLA's own options (YNNPACK convolutions): the code before.

It prints, per parameter leaf, the relative deviation of the update ‖Δfast − Δplain‖ /
‖Δplain‖ (what the rewrites change) beside ‖Δplain − Δynn‖ / ‖Δynn‖ (what changing the
convolution library alone changes: float32 rounding, amplified where a gradient is a sum
that cancels, e.g. early BatchNorm biases). The rewrites keep the math when their deviation
stays at the library's noise floor. The unit tests (``tests/test_fast_paths.py``) check each
rewrite exactly on small inputs; this script is the whole-step check, too slow for the suite.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from jax_cavs.core import optim, steps, xla
from jax_cavs.core.state import create_state
from jax_cavs.models.heads import decoder as decoder_lib
from jax_cavs.models.heads import neck as neck_lib
from jax_cavs.problems.cavs import strategies
from jax_cavs.problems.cavs.losses import segmentation
from jax_cavs.problems.cavs.model import AVSModel
from jax_cavs.problems.cavs.problem import CAVSProblem

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from test_fast_paths import _gather_pair_resize  # noqa: E402  (the replaced upsampling)

K, T, SIZE = 71, 5, 64


class _FullConv3x3(nn.Module):
    """The replaced neck conv (``nn.Conv``'s computation): every tap, padding included; the
    same parameters as ``PaddingAwareConv3x3``."""
    features: int
    dilation: int
    kernel_init: object
    bias_init: object
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dilation
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((d, d), (d, d)),
                                            rhs_dilation=(d, d),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


def _plain_upsample(x):
    return _gather_pair_resize(_gather_pair_resize(x, 1, 2 * x.shape[1]), 2, 2 * x.shape[2])


def _batch():
    rng = np.random.default_rng(0)
    return {"frames": jnp.asarray(rng.normal(size=(1, T, SIZE, SIZE, 3)), jnp.float32),
            "audio": jnp.asarray(rng.normal(size=(1, T, 96, 64)), jnp.float32),
            "labels": jnp.asarray(rng.integers(0, K, (1, T, SIZE, SIZE)), jnp.int32),
            "label_mask": jnp.ones((1, T)), "frame_mask": jnp.ones((1, T)),
            "index": jnp.zeros((1,), jnp.int32), "is_memory": jnp.zeros((1,), bool),
            "valid": jnp.ones((1,))}


def _first_step(jit):
    problem = CAVSProblem(AVSModel(num_classes=K))
    batch = _batch()
    variables = xla.jit(lambda r: problem.model.init(r, batch["frames"], batch["audio"],
                                                     batch["frame_mask"], train=False))(
        jax.random.key(0))
    config = ml_collections.ConfigDict(dict(name="sgd", lr=1.0, weight_decay=0.0,
                                            grad_clip=0.0))
    tx = optim.build_optimizer(config, problem.param_roles()["frozen"])
    state = create_state(variables, tx, K, 0, False, {}).replace(seen=jnp.ones((K,), bool))
    step = jit(steps.make_train_step(problem, strategies.get_strategy("finetune",
                                                                       problem=problem)))
    new_state, metrics = step(state, batch, jax.random.key(0))
    return jax.device_get((state.params, new_state.params, metrics))


def _plain_steps(monkeypatch_targets):
    """(plain, ynn) first steps with the replaced formulations put back."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in monkeypatch_targets]
    try:
        for module, name, value in monkeypatch_targets:
            setattr(module, name, value)
        return _first_step(xla.jit), _first_step(jax.jit)
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _deviations(params, reference, before):
    """{leaf path: ‖Δ − Δ_ref‖ / ‖Δ_ref‖} of the updates (frozen leaves: must not move)."""
    out = {}
    for (path, new), ref, old in zip(jax.tree_util.tree_leaves_with_path(params),
                                     jax.tree_util.tree_leaves(reference),
                                     jax.tree_util.tree_leaves(before)):
        delta, ref_delta = new - old, ref - old
        name = jax.tree_util.keystr(path)
        if "audio_encoder" in name:
            if np.any(delta) or np.any(ref_delta):
                raise AssertionError(f"frozen leaf {name} moved")
            continue
        scale = max(float(np.linalg.norm(ref_delta)), float(np.finfo(np.float32).tiny))
        out[name] = float(np.linalg.norm(delta - ref_delta)) / scale
    return out


def main() -> None:
    before, fast, fast_metrics = _first_step(xla.jit)
    take = lambda v, y: jnp.take_along_axis(v, y[..., None], axis=-1)[..., 0]
    (_, plain, plain_metrics), (_, ynn, ynn_metrics) = _plain_steps([
        (decoder_lib, "upsample2x_align_corners", _plain_upsample),
        (neck_lib, "PaddingAwareConv3x3", _FullConv3x3),
        (segmentation, "_gather_class", take)])
    rewrites = _deviations(fast, plain, before)
    library = _deviations(plain, ynn, before)
    print(f"loss: fast {float(fast_metrics['loss']):.7f}, plain {float(plain_metrics['loss']):.7f}"
          f", ynn {float(ynn_metrics['loss']):.7f}")
    print(f"{'relative update deviation':28s} {'median':>9s} {'90%':>9s} {'max':>9s}")
    for label, values in (("rewrites (fast vs plain)", rewrites),
                          ("library (plain vs ynn)", library)):
        v = np.asarray(list(values.values()))
        print(f"{label:28s} {np.median(v):9.2e} {np.quantile(v, 0.9):9.2e} {v.max():9.2e}")
    worst = sorted(rewrites, key=rewrites.get)[-5:]
    print("largest rewrite deviations (library's on the same leaf):")
    for name in reversed(worst):
        print(f"  {name:60s} {rewrites[name]:9.2e} ({library[name]:9.2e})")


if __name__ == "__main__":
    main()
