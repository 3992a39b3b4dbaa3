"""The model's correspondences with its PyTorch references (spec §3): torchvision / torchvggish
state-dict keys map one to one onto the Flax variables, the bilinear resizes match PyTorch's
``align_corners`` semantics, and the decoder matches a PyTorch transcription of AVSBench's.
Variables are drawn with test_models.py's ``_random_variables``.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cavs.models import torch_names
from jax_cavs.models.audio.vggish import VGGish, torchvggish_key_to_flax_path
from jax_cavs.models.backbones.resnet import ResNet, torchvision_key_to_flax_path
from jax_cavs.models.heads.upsample import resize_bilinear_align_corners, upsample2x_half_pixel
from test_models import _random_variables


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
