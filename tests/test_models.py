"""Tests of the AVS segmentation model and its parts (spec §2.5, §3).

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

from jax_cavs.models import torch_names
from jax_cavs.models.audio.vggish import VGGish, torchvggish_key_to_flax_path
from jax_cavs.problems.cavs.model import AVSModel, build_model
from jax_cavs.problems.cavs.problem import CAVSProblem
from jax_cavs.models.backbones.resnet import ResNet, torchvision_key_to_flax_path
from jax_cavs.models.heads.upsample import resize_bilinear_align_corners, upsample2x_half_pixel

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


# ----------------------------------------------------------------------------- torch names

def _torchvision_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of torchvision.models.resnet{depth}, written from the
    architecture (torchvision's ``_make_layer``), independent of the mapping code."""
    bottleneck = depth == 50
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    expansion = 4 if bottleneck else 1
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix, channels):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(num_blocks):
            p = f"layer{layer}.{b}"
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for i, (out_c, in_c, k) in enumerate(convs, start=1):
                shapes[f"{p}.conv{i}.weight"] = (out_c, in_c, k, k)
                bn(f"{p}.bn{i}", out_c)
            if b == 0 and (layer > 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, inplanes)
    shapes["fc.bias"] = (1000,)
    return shapes


def _torchvggish_shapes() -> dict[str, tuple[int, ...]]:
    """torchvggish VGG state dict: Sequential indices of the convs (each followed by a ReLU, the
    pools in between) and of the three Linear layers (each followed by a ReLU)."""
    shapes = {}
    convs = {0: (64, 1), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256),
             13: (512, 512)}
    for index, (out_c, in_c) in convs.items():
        shapes[f"features.{index}.weight"] = (out_c, in_c, 3, 3)
        shapes[f"features.{index}.bias"] = (out_c,)
    for index, (out_f, in_f) in {0: (4096, 512 * 4 * 6), 2: (4096, 4096), 4: (128, 4096)}.items():
        shapes[f"embeddings.{index}.weight"] = (out_f, in_f)
        shapes[f"embeddings.{index}.bias"] = (out_f,)
    return shapes


def _flax_shapes(abstract_variables) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(abstract_variables)[0]
    return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def _assert_round_trip(torch_shapes, key_to_path, flax_shapes, unmapped_prefixes):
    mapped = {}
    for key, torch_shape in torch_shapes.items():
        path = key_to_path(key)
        if key.endswith("num_batches_tracked") or key.startswith(unmapped_prefixes):
            assert path is None, key
            continue
        assert path in flax_shapes, (key, path)
        assert torch_names.torch_to_flax_layout(np.empty(torch_shape)).shape == flax_shapes[path], key
        assert torch_names.flax_path_to_torch_key(path) == key
        mapped[path] = key
    assert set(mapped) == set(flax_shapes)  # a bijection onto every Flax variable


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_keys_round_trip(depth):
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    abstract = jax.eval_shape(functools.partial(ResNet(depth).init, train=False),
                              jax.random.PRNGKey(0), images)
    _assert_round_trip(_torchvision_resnet_shapes(depth), torchvision_key_to_flax_path,
                       _flax_shapes(abstract), ("fc.",))


def test_torchvggish_keys_round_trip():
    log_mel = jax.ShapeDtypeStruct((1, 96, 64), jnp.float32)
    abstract = jax.eval_shape(VGGish().init, jax.random.PRNGKey(0), log_mel)
    _assert_round_trip(_torchvggish_shapes(), torchvggish_key_to_flax_path,
                       _flax_shapes(abstract), ("pproc.",))


def test_torch_key_mapping_examples_and_errors():
    assert torchvision_key_to_flax_path("layer1.0.conv1.weight") == (
        "params", "layer1_0", "conv1", "kernel")
    assert torchvision_key_to_flax_path("layer2.0.downsample.1.running_var") == (
        "batch_stats", "layer2_0", "downsample_1", "var")
    with pytest.raises(ValueError, match="running_mean"):
        torchvggish_key_to_flax_path("features.0.running_mean")
    with pytest.raises(ValueError):
        torchvision_key_to_flax_path("conv1")


# ----------------------------------------------------------------------------- upsampling

def _numpy_bilinear(x, out_h, out_w, align_corners):
    """PyTorch's bilinear interpolation, written per output pixel (float64)."""
    _, in_h, in_w, _ = x.shape

    def source(i, n_in, n_out):
        if align_corners:
            return i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return max((i + 0.5) * n_in / n_out - 0.5, 0.0)

    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(out_h):
        sy = source(i, in_h, out_h)
        y0 = min(int(np.floor(sy)), in_h - 1)
        y1, ly = min(y0 + 1, in_h - 1), sy - y0
        for j in range(out_w):
            sx = source(j, in_w, out_w)
            x0 = min(int(np.floor(sx)), in_w - 1)
            x1, lx = min(x0 + 1, in_w - 1), sx - x0
            out[:, i, j] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                            + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
    return out


def test_align_corners_hand_values():
    x = jnp.asarray([0.0, 3.0], jnp.float32).reshape(1, 1, 2, 1)
    out = resize_bilinear_align_corners(x, (1, 4))  # samples at 0, 1/3, 2/3, 1
    chex.assert_trees_all_close(out.reshape(-1), jnp.asarray([0.0, 1.0, 2.0, 3.0]), atol=1e-6)


@pytest.mark.parametrize("in_hw,out_hw", [((1, 1), (2, 2)), ((2, 3), (4, 6)), ((7, 7), (14, 14)),
                                          ((3, 5), (6, 10)), ((4, 5), (7, 3))])
def test_align_corners_matches_numpy_reference(in_hw, out_hw):
    x = np.random.default_rng(1).normal(size=(2, *in_hw, 3))
    out = resize_bilinear_align_corners(jnp.asarray(x, jnp.float32), out_hw)
    # 2-tap blends of O(1) values in float32: error ~ a few ulps of O(1).
    chex.assert_trees_all_close(out, _numpy_bilinear(x, *out_hw, True).astype(np.float32),
                                rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_hw", [(1, 1), (2, 3), (7, 7)])
def test_half_pixel_upsampling_matches_pytorch_align_corners_false(in_hw):
    x = np.random.default_rng(2).normal(size=(2, *in_hw, 3))
    out = upsample2x_half_pixel(jnp.asarray(x, jnp.float32))
    expected = _numpy_bilinear(x, 2 * in_hw[0], 2 * in_hw[1], False).astype(np.float32)
    chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- decoder parity

def _torch_decoder(params, fused, num_classes, head_channels):
    """The AVSBench decoder (spec §3.4) in PyTorch, NCHW, with its in-place ReLUs, loaded with the
    Flax decoder's parameters; returns (logits, D1) channels-last."""
    torch = pytest.importorskip("torch", reason="the decoder parity test needs torch (dev extra)")
    nn = torch.nn
    c = fused[0].shape[-1]

    class ResidualConvUnit(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
            self.relu = nn.ReLU(inplace=True)  # overwrites x: the skip adds relu(x)

        def forward(self, x):
            return self.conv2(self.relu(self.conv1(self.relu(x)))) + x

    class FeatureFusionBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.resConfUnit1, self.resConfUnit2 = ResidualConvUnit(), ResidualConvUnit()

        def forward(self, *xs):
            output = xs[0]
            if len(xs) == 2:
                output += self.resConfUnit1(xs[1])
            output = self.resConfUnit2(output)
            return nn.functional.interpolate(output, scale_factor=2, mode="bilinear",
                                             align_corners=True)

    paths = {name: FeatureFusionBlock() for name in ("path4", "path3", "path2", "path1")}
    mid, low = head_channels
    head = [nn.Conv2d(c, mid, 3, 1, 1), nn.Conv2d(mid, low, 3, 1, 1),
            nn.Conv2d(low, num_classes, 1)]  # output_conv indices 0, 2, 4

    def load(conv, p):
        conv.weight.data = torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy())
        conv.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())

    for name, block in paths.items():
        for unit in ("resConfUnit1", "resConfUnit2"):
            if unit in params[name]:
                load(getattr(block, unit).conv1, params[name][unit]["conv1"])
                load(getattr(block, unit).conv2, params[name][unit]["conv2"])
    for index, conv in zip((0, 2, 4), head):
        load(conv, params[f"output_conv_{index}"])

    f0, f1, f2, f3 = (torch.from_numpy(np.asarray(f).transpose(0, 3, 1, 2).copy()) for f in fused)
    with torch.no_grad():
        d = paths["path1"](paths["path2"](paths["path3"](paths["path4"](f3), f2), f1), f0)
        d1 = d.clone()
        x = nn.functional.interpolate(head[0](d), scale_factor=2, mode="bilinear",
                                      align_corners=False)
        logits = head[2](torch.relu(head[1](x)))
    return logits.numpy().transpose(0, 2, 3, 1), d1.numpy().transpose(0, 2, 3, 1)


def test_decoder_matches_pytorch_reference_semantics():
    from jax_cavs.models.heads.decoder import ProgressiveDecoder

    rng = np.random.default_rng(3)
    c, k, head_channels = 8, 5, (4, 3)
    fused = tuple(jnp.asarray(rng.normal(size=(2, 16 // 2 ** i, 16 // 2 ** i, c)), jnp.float32)
                  for i in range(4))
    decoder = ProgressiveDecoder(num_classes=k, head_channels=head_channels)
    mask = jnp.ones((2,), jnp.float32)
    variables = _random_variables(jax.eval_shape(decoder.init, jax.random.PRNGKey(0), fused, mask))
    logits, d1 = jax.jit(decoder.apply)(variables, fused, mask)
    ref_logits, ref_d1 = _torch_decoder(variables["params"], fused, k, head_channels)
    # float32 on both sides; 3x3 convs over 8 channels (72-term sums) through ~10 layers.
    chex.assert_trees_all_close((d1, logits), (ref_d1, ref_logits), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- audio

def test_assembled_model_depends_on_its_audio_after_one_optimizer_step():
    """From the real initialisation (TPAVI's output projection starts at zero, so at step 0
    the audio cannot matter), one Adam step on the CE of ``CAVSProblem.loss`` makes the
    eval-mode outputs depend on the audio and gives the audio encoder a non-zero gradient:
    the audio path is wired into the loss, not cut by a stop_gradient or a dropped input."""
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

    grad = jax.jit(jax.grad(loss))
    tx = optax.adam(1e-2)
    params = variables["params"]
    updates, _ = tx.update(grad(params), tx.init(params), params)
    params = optax.apply_updates(params, updates)

    other = {**batch, "audio": batch["audio"][::-1]}  # the two clips swap their audio
    logits = [problem.apply({**variables, "params": params}, b, train=False)[0].logits
              for b in (batch, other)]
    assert float(jnp.max(jnp.abs(logits[0] - logits[1]))) > 1e-4
    audio_grads = jax.tree.leaves(grad(params)["audio_encoder"])
    assert sum(float(jnp.sum(jnp.square(g))) for g in audio_grads) > 0.0
