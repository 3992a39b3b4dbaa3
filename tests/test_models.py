"""Tests of the AVS segmentation model and its parts (spec §2.5, §3): shapes, masking, modes,
build_model and the audio path. The PyTorch correspondences (state-dict key mappings, bilinear
upsampling, the decoder) are tested in test_models_torch_reference.py.

Forward passes use a CPU-sized model at 64x64 with variables drawn by numpy from the shapes that
``jax.eval_shape(model.init)`` reports (a jitted ``model.init`` compiles one threefry sampler per
parameter, which costs more than these tests), with positive BatchNorm variances.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from jax_cavs.models.audio.vggish import VGGish
from jax_cavs.models.fusion.tpavi import TPAVI
from jax_cavs.problems.cavs.model import AVSModel, build_model
from jax_cavs.problems.cavs.problem import CAVSProblem

NUM_CLASSES = 17
N, T, H, W = 2, 5, 64, 64


def small_config() -> ml_collections.ConfigDict:
    """The CPU-sized model: ResNet-18 at width 1/4 (16 base channels), 32-channel neck."""
    return ml_collections.ConfigDict(dict(
        num_classes=NUM_CLASSES, backbone_depth=18, backbone_width=0.25, neck_channels=32,
        neck_dilations=(1, 2, 3, 4), tpavi_stages=(0, 1, 2, 3), tpavi_inter_channels=16,
        tpavi_group=5, audio_width=0.125, freeze_audio=False, dtype="float32",
        remat_backbone=False))


def _inputs(n=N, t=T, h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    frames = jnp.asarray(rng.normal(size=(n, t, h, w, 3)), jnp.float32)
    audio = jnp.asarray(rng.normal(size=(n, t, 96, 64)), jnp.float32)
    return frames, audio, jnp.ones((n, t), jnp.float32)


def _random_variables(abstract_variables, seed=0):
    """numpy N(0, 0.1²) for every variable; BatchNorm 'var' drawn from U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_variables)


@pytest.fixture(scope="module")
def small():
    model = build_model(small_config())
    frames, audio, mask = _inputs()
    abstract = jax.eval_shape(functools.partial(model.init, train=False),
                              jax.random.PRNGKey(0), frames, audio, mask)
    apply = jax.jit(functools.partial(model.apply, train=False))
    return model, _random_variables(abstract), apply


# ----------------------------------------------------------------------------- shapes

def test_small_model_output_shapes(small):
    model, variables, apply = small
    logits, features = apply(variables, *_inputs())
    nt, c = N * T, model.neck_channels
    chex.assert_shape(logits, (N, T, H, W, NUM_CLASSES))
    assert logits.dtype == jnp.float32
    stage_channels = (16, 32, 64, 128)  # ResNet-18 at width 1/4: 16·(1, 2, 4, 8)
    for i in range(4):
        side = H // 2 ** (i + 2)
        chex.assert_shape(features["backbone"][i], (nt, side, side, stage_channels[i]))
        chex.assert_shape(features["neck"][i], (nt, side, side, c))
        chex.assert_shape(features["aligned_audio"][i], (nt, c))
    chex.assert_shape(features["decoder"], (nt, H // 2, W // 2, c))
    chex.assert_shape(features["logits_small"], (nt, H // 2, W // 2, NUM_CLASSES))
    chex.assert_shape(features["audio"], (nt, 128))
    chex.assert_tree_all_finite((logits, features))


def test_paper_topology_shapes_and_parameter_counts():
    """ResNet-50 at 224, T = 10 (two TPAVI groups of 5), K = 71: shapes via eval_shape only."""
    model = AVSModel(num_classes=71)
    frames = jax.ShapeDtypeStruct((1, 10, 224, 224, 3), jnp.float32)
    audio = jax.ShapeDtypeStruct((1, 10, 96, 64), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 10), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False),
                               jax.random.PRNGKey(0), frames, audio, mask)
    logits, features = jax.eval_shape(functools.partial(model.apply, train=False),
                                      variables, frames, audio, mask)
    assert logits.shape == (1, 10, 224, 224, 71)
    assert [f.shape for f in features["backbone"]] == [
        (10, 56, 56, 256), (10, 28, 28, 512), (10, 14, 14, 1024), (10, 7, 7, 2048)]
    assert [f.shape for f in features["neck"]] == [
        (10, 56, 56, 256), (10, 28, 28, 256), (10, 14, 14, 256), (10, 7, 7, 256)]
    assert [a.shape for a in features["aligned_audio"]] == [(10, 256)] * 4
    assert features["decoder"].shape == (10, 112, 112, 256)
    assert features["logits_small"].shape == (10, 112, 112, 71)
    assert features["audio"].shape == (10, 128)

    def count(tree):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))

    # torchvision resnet50: 25,557,032 parameters minus fc (2048·1000 + 1000).
    assert count(variables["params"]["backbone"]) == 25_557_032 - 2_049_000
    # torchvggish: 4,499,712 conv + 67,641,472 fc parameters.
    assert count(variables["params"]["audio_encoder"]) == 72_141_184


# ----------------------------------------------------------------------------- masking

def test_padded_frames_are_zero_everywhere(small):
    model, variables, apply = small
    frames, audio, mask = _inputs()
    mask = mask.at[1, 3:].set(0.0)  # clip 1 has 3 real frames
    logits, features = jax.device_get(apply(variables, frames, audio, mask))
    padded = np.asarray(mask).reshape(-1) == 0
    np.testing.assert_array_equal(logits[1, 3:], 0.0)
    assert np.all(np.abs(logits[1, :3]).reshape(3, -1).max(axis=1) > 0)
    for name in ("neck", "decoder", "logits_small", "audio"):
        for leaf in jax.tree.leaves(features[name]):
            np.testing.assert_array_equal(leaf[padded], 0.0, err_msg=name)
            real = np.abs(leaf[~padded]).reshape(int((~padded).sum()), -1)
            assert np.all(real.max(axis=1) > 0), name  # every real frame is non-zero


# ----------------------------------------------------------------------------- modes

def test_eval_mode_is_deterministic_and_train_mode_updates_batch_stats(small):
    model, variables, apply = small
    inputs = _inputs()
    first = apply(variables, *inputs)
    second = apply(variables, *inputs)
    chex.assert_trees_all_equal(first, second)

    (train_logits, _), updates = jax.jit(functools.partial(
        model.apply, train=True, mutable=["batch_stats"]))(variables, *inputs)
    chex.assert_trees_all_equal_structs(updates["batch_stats"], variables["batch_stats"])
    moved = jax.tree.map(lambda new, old: bool(jnp.any(new != old)),
                         updates["batch_stats"], variables["batch_stats"])
    assert all(jax.tree.leaves(moved))
    assert float(jnp.abs(train_logits - first[0]).max()) > 0


def test_remat_backbone_keeps_parameter_names_and_outputs(small):
    model, variables, apply = small
    remat_model = model.clone(remat_backbone=True)
    inputs = _inputs()
    abstract = jax.eval_shape(functools.partial(remat_model.init, train=False),
                              jax.random.PRNGKey(0), *inputs)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, variables)
    logits, _ = jax.jit(functools.partial(remat_model.apply, train=False))(variables, *inputs)
    chex.assert_trees_all_close(logits, apply(variables, *inputs)[0], rtol=0, atol=0)


def test_frozen_audio_encoder_gets_no_gradient():
    frozen, trainable = VGGish(width=0.125, frozen=True), VGGish(width=0.125, frozen=False)
    log_mel = jnp.asarray(np.random.default_rng(0).normal(size=(2, 96, 64)), jnp.float32)
    variables = _random_variables(jax.eval_shape(frozen.init, jax.random.PRNGKey(0), log_mel))

    def grad_norm(module):
        loss = lambda p: jnp.sum(module.apply({"params": p}, log_mel) ** 2)
        grads = jax.jit(jax.grad(loss))(variables["params"])
        return float(sum(np.sum(np.square(g)) for g in jax.tree.leaves(jax.device_get(grads))))

    assert grad_norm(frozen) == 0.0
    assert grad_norm(trainable) > 0.0


# ----------------------------------------------------------------------------- build_model

def test_build_model_reads_fields_and_rejects_unknown_ones():
    cfg = small_config()
    cfg.dtype = "bfloat16"
    cfg.neck_dilations = [1, 2]
    model = build_model(cfg)
    assert model.dtype == jnp.bfloat16 and model.neck_dilations == (1, 2)
    assert model.backbone_depth == 18 and model.num_classes == NUM_CLASSES
    # Mixed precision: bfloat16 compute, float32 parameters and logits.
    inputs = _inputs(n=1)
    variables = jax.eval_shape(functools.partial(model.init, train=False),
                               jax.random.PRNGKey(0), *inputs)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits, features = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                                      *inputs)
    assert logits.dtype == jnp.float32 and features["decoder"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="neck_channel"):
        build_model(ml_collections.ConfigDict(dict(num_classes=3, neck_channel=8)))
    with pytest.raises(ValueError, match="num_classes"):
        build_model(ml_collections.ConfigDict(dict(backbone_depth=18)))


def test_rejects_bad_input_shapes(small):
    model, variables, _ = small
    frames, audio, mask = _inputs(h=48, w=48)
    with pytest.raises(ValueError, match="multiple of 32"):
        jax.eval_shape(functools.partial(model.apply, train=False), variables, frames, audio, mask)
    frames, audio, mask = _inputs(t=4)
    with pytest.raises(ValueError, match="tpavi_group"):
        jax.eval_shape(functools.partial(model.apply, train=False), variables, frames, audio, mask)


# ----------------------------------------------------------------------------- audio

class _EchoAudio:
    """A stand-in model whose "logits" are the audio it is fed."""

    num_classes = 2

    def apply(self, variables, frames, audio, frame_mask, *, train):
        return audio, {}


def test_dropped_audio_is_the_log_mel_of_silence():
    """``CAVSProblem.apply(..., drop={"audio"})`` (CMR's visual twin and its "zero_audio"
    learner) feeds log(0.01), the VGGish log-mel of silence, not zeros; without ``drop`` the
    clip's own audio."""
    problem = CAVSProblem(_EchoAudio())
    frames, audio, mask = _inputs(n=1, h=32, w=32)
    batch = {"frames": frames, "audio": audio, "frame_mask": mask}
    fed = lambda drop: problem.apply({}, batch, train=False, drop=drop)[0].logits
    chex.assert_trees_all_equal(fed(frozenset({"audio"})),
                                jnp.full(audio.shape, np.log(np.float32(0.01))))
    chex.assert_trees_all_equal(fed(frozenset()), audio)


@pytest.fixture(scope="module")
def initialised():
    """The small model's real initial variables (TPAVI gate 0, AVSBench's), the CE gradient
    function on a labelled 2-clip 32x32 batch, and the eval-mode logits of the batch and of
    the batch with the clips' audio swapped, as a function of the parameters."""
    problem = CAVSProblem(build_model(small_config()))
    frames, audio, mask = _inputs(n=2, t=T, h=32, w=32)
    batch = {"frames": frames, "audio": audio, "frame_mask": mask,
             "label_mask": mask, "valid": jnp.ones((2,)),
             "labels": jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, T, 32, 32)),
                                   jnp.int32)}
    classes = jnp.arange(NUM_CLASSES) < 3
    variables = jax.jit(functools.partial(problem.model.init, train=False))(
        jax.random.PRNGKey(0), frames, audio, mask)

    def loss(params):
        outputs, _ = problem.apply({**variables, "params": params}, batch, train=True)
        return problem.loss(outputs, batch, classes)

    other = {**batch, "audio": batch["audio"][::-1]}  # the two clips swap their audio

    def logits(params):
        return [problem.apply({**variables, "params": params}, b, train=False)[0].logits
                for b in (batch, other)]

    return variables, jax.jit(jax.grad(loss)), logits


def _audio_effects(grad, logits, params) -> tuple[float, float]:
    """(max |logit change| when the clips swap their audio, squared norm of the audio
    encoder's CE gradient) at ``params``."""
    swapped = logits(params)
    audio_grads = jax.tree.leaves(grad(params)["audio_encoder"])
    return (float(jnp.max(jnp.abs(swapped[0] - swapped[1]))),
            sum(float(jnp.sum(jnp.square(g))) for g in audio_grads))


def test_assembled_model_depends_on_its_audio_after_one_optimizer_step(initialised):
    """From the real initialisation (TPAVI's output projection starts at zero, so at step 0
    the audio cannot matter), one Adam step on the CE of ``CAVSProblem.loss`` makes the
    eval-mode outputs depend on the audio and gives the audio encoder a non-zero gradient:
    the audio path is wired into the loss, not cut by a stop_gradient or a dropped input."""
    variables, grad, logits = initialised
    tx = optax.adam(1e-2)
    params = variables["params"]
    updates, _ = tx.update(grad(params), tx.init(params), params)
    change, audio_grad = _audio_effects(grad, logits, optax.apply_updates(params, updates))
    assert change > 1e-4 and audio_grad > 0.0


@pytest.mark.parametrize("gate_init", [0.0, 0.1])
def test_tpavi_gate_init_decides_whether_the_audio_matters_at_init(initialised, gate_init):
    """``model.tpavi_gate_init`` reaches every TPAVI block, whose output BatchNorm then starts
    at scale = gate_init (``test_tpavi``; nothing random depends on it, so the model's initial
    variables are the default ones with those scales): at 0 (AVSBench) the initial logits
    ignore the audio exactly and the audio encoder's gradient is exactly zero; at 0.1 the
    logits change with the audio and the audio encoder gets a gradient."""
    cfg = small_config()
    cfg.tpavi_gate_init = gate_init
    gates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, TPAVI) and context.method_name == "__call__":
            gates.append(context.module.gate_init)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(build_model(cfg).init, train=False),
                       jax.random.PRNGKey(0), *_inputs(n=1, h=32, w=32))
    assert gates == [gate_init] * 4
    variables, grad, logits = initialised
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.full_like(p, gate_init)
        if jax.tree_util.keystr(path).endswith("['W_z_1']['scale']") else p,
        variables["params"])
    change, audio_grad = _audio_effects(grad, logits, params)
    if gate_init:
        assert change > 1e-4 and audio_grad > 0.0
    else:
        assert change == 0.0 and audio_grad == 0.0
