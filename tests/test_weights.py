"""Pretrained-weight import (jax_cavs.models.weights): readers, merge_params, torch parity.

The parity tests build torchvision-style ResNets and a torchvggish-style VGG in PyTorch with the
exact parameter names of those libraries (torchvision itself is not a dependency), save their
state dicts in the three supported formats (torch zip, legacy torch.save, safetensors), convert
them with the torch-free reader, and compare the Flax model's outputs with PyTorch's (eval mode).
They need PyTorch, part of the ``dev`` extra (``pip install -e '.[dev]'``), and are skipped
without it; the reader/merge tests below them use numpy and safetensors only.

Tolerance (float32, unit roundoff u = 2^-24 ≈ 6e-8): a conv/linear output is a dot product of
length K that XLA and PyTorch sum in different orders, so they differ by about sqrt(K)·u of the
magnitude of its terms (rounding errors as a random walk). Independent layers add these in
quadrature: ResNet-50 at width 1/8 has L = 49 convs in sequence with K <= 3·3·64 = 576, giving
sqrt(49)·sqrt(576)·u ≈ 1e-5 of the output scale; VGGish at width 1/8 has L = 9 with K <= 1536
(its first FC), giving 3·sqrt(1536)·u ≈ 7e-6. Outputs are compared with
atol = 1e-5·max|reference| and rtol = 1e-5 (measured: at most 3e-7·max|reference|). Any mapping
error (a swapped mean/var, a wrong transpose or flatten order) changes outputs by
O(max|reference|).
"""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy_safetensors

from jax_cavs.models import weights
from jax_cavs.models.audio.vggish import VGGish
from jax_cavs.problems.cavs.model import AVSModel
from jax_cavs.models.backbones.resnet import ResNet, torchvision_key_to_flax_path

try:
    import torch
    from torch import nn
except ImportError:  # the dev extra (torch) is not installed
    torch = None

requires_torch = pytest.mark.skipif(
    torch is None, reason="PyTorch is not installed; the parity tests need the "
                          "'dev' extra (pip install -e '.[dev]', torch==2.13.0).")
PARITY_TOL = 1e-5
FORMATS = ("zip", "legacy", "safetensors")


# ------------------------------------------------------------------------------------------------
# PyTorch reference networks (torchvision / torchvggish parameter names).

if torch is not None:

    class TorchBasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU()
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class TorchBottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU()
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class TorchResNet(nn.Module):
        """torchvision.models.ResNet with a ``base`` channel count; returns layer1..layer4."""

        def __init__(self, block, layers, base=64, num_classes=1000):
            super().__init__()
            self.inplanes = base
            self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, base, layers[0], 1)
            self.layer2 = self._make_layer(block, base * 2, layers[1], 2)
            self.layer3 = self._make_layer(block, base * 4, layers[2], 2)
            self.layer4 = self._make_layer(block, base * 8, layers[3], 2)
            self.fc = nn.Linear(base * 8 * block.expansion, num_classes)

        def _make_layer(self, block, planes, blocks, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x1 = self.layer1(x)
            x2 = self.layer2(x1)
            x3 = self.layer3(x2)
            return x1, x2, x3, self.layer4(x3)

    class TorchVGGish(nn.Module):
        """torchvggish.VGG (``make_layers`` features + embeddings) with a width multiplier."""

        def __init__(self, width=1.0):
            super().__init__()
            layers, in_channels = [], 1
            for entry in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
                if entry == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    out = int(round(entry * width))
                    layers += [nn.Conv2d(in_channels, out, 3, padding=1), nn.ReLU(inplace=True)]
                    in_channels = out
            self.features = nn.Sequential(*layers)
            hidden = int(round(4096 * width))
            self.embeddings = nn.Sequential(
                nn.Linear(in_channels * 6 * 4, hidden), nn.ReLU(True),
                nn.Linear(hidden, hidden), nn.ReLU(True), nn.Linear(hidden, 128), nn.ReLU(True))

        def forward(self, x):
            x = self.features(x)
            x = torch.transpose(x, 1, 3)  # as torchvggish: [N, C, H, W] -> [N, H, W, C]
            x = torch.transpose(x, 1, 2)
            return self.embeddings(x.contiguous().view(x.size(0), -1))


def _randomise_batch_norms(module, generator):
    """Non-trivial BN statistics and affine parameters, so a swapped mean/var or scale/bias
    mapping changes the outputs."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features
            layer.weight.data = torch.rand(c, generator=generator) + 0.5
            layer.bias.data = torch.randn(c, generator=generator) * 0.1
            layer.running_mean.data = torch.randn(c, generator=generator) * 0.1
            layer.running_var.data = torch.rand(c, generator=generator) + 0.5


def _save(state_dict, path, fmt):
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, str(path), _use_new_zipfile_serialization=(fmt == "zip"))


def _assert_parity(flax_outputs, torch_outputs):
    torch_outputs = [np.asarray(t) for t in torch_outputs]
    for got, want in zip(flax_outputs, torch_outputs, strict=True):
        scale = float(np.abs(want).max())
        assert scale > 0, "degenerate reference output"
        chex.assert_trees_all_close(np.asarray(got), want, rtol=PARITY_TOL,
                                    atol=PARITY_TOL * scale)


# ------------------------------------------------------------------------------------------------
# Parity.


@requires_torch
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("depth,block,layers", [(18, "basic", (2, 2, 2, 2)),
                                                (50, "bottleneck", (3, 4, 6, 3))])
def test_resnet_parity(tmp_path, fmt, depth, block, layers):
    generator = torch.Generator().manual_seed(depth)
    torch.manual_seed(depth)
    block_cls = TorchBasicBlock if block == "basic" else TorchBottleneck
    reference = TorchResNet(block_cls, layers, base=8).eval()
    _randomise_batch_norms(reference, generator)
    path = tmp_path / ("resnet.safetensors" if fmt == "safetensors" else "resnet.pth")
    _save(reference.state_dict(), path, fmt)

    model = ResNet(depth=depth, width=0.125)
    images = np.random.default_rng(depth).normal(size=(2, 64, 64, 3)).astype(np.float32)
    # Shapes suffice as the target: every leaf comes from the checkpoint.
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
    variables = weights.load_torchvision_resnet(shapes, path, prefix=())
    flax_outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    with torch.no_grad():
        torch_outputs = reference(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    _assert_parity(flax_outputs, [t.numpy().transpose(0, 2, 3, 1) for t in torch_outputs])


@requires_torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_vggish_parity(tmp_path, fmt):
    torch.manual_seed(1)
    reference = TorchVGGish(width=0.125).eval()
    path = tmp_path / ("vggish.safetensors" if fmt == "safetensors" else "vggish.pth")
    _save(reference.state_dict(), path, fmt)

    model = VGGish(width=0.125)
    log_mel = np.random.default_rng(1).normal(size=(3, 96, 64)).astype(np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), log_mel)
    variables = weights.load_torchvggish(shapes, path, prefix=())
    flax_output = jax.jit(model.apply)(variables, log_mel)
    with torch.no_grad():
        torch_output = reference(torch.from_numpy(log_mel[:, None]))
    # The ReLU output must not be all zeros for the comparison to mean anything.
    assert float(torch_output.abs().max()) > 0
    _assert_parity([flax_output], [torch_output.numpy()])


@requires_torch
def test_resnet50_full_topology_matches_torchvision_names_and_shapes():
    """Every torchvision ResNet-50 key maps to a Flax leaf of ResNet(50) with the same (converted)
    shape, and vice versa; only fc.* and num_batches_tracked are dropped."""
    reference = TorchResNet(TorchBottleneck, (3, 4, 6, 3), base=64)
    state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
    loaded = weights.state_dict_to_variables(state_dict, torchvision_key_to_flax_path)
    shapes = jax.eval_shape(lambda: ResNet(depth=50).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
    merged = weights.merge_params(shapes, loaded)  # raises on any missing/extra/shape mismatch
    num_mapped = sum(1 for k in state_dict if not k.startswith("fc.")
                     and not k.endswith("num_batches_tracked"))
    # 53 convs (stem + 16 blocks x 3 + 4 projections), each with a BN (weight, bias, mean, var).
    assert len(jax.tree_util.tree_leaves(merged)) == num_mapped == 53 + 53 * 4
    assert sum(v.size for v in jax.tree_util.tree_leaves(loaded["params"])) == sum(
        p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))


# ------------------------------------------------------------------------------------------------
# Reader and merge behaviour (numpy / safetensors only).


def _tiny_avs_model():
    return AVSModel(num_classes=3, backbone_depth=18, backbone_width=0.125, neck_channels=8,
                    neck_dilations=(1, 2), tpavi_stages=(3,), tpavi_inter_channels=4,
                    tpavi_group=5, audio_width=0.125)


def _torch_layout_state_dict(flax_variables, rng):
    """A random torchvision-named state dict whose converted shapes fit ``flax_variables``."""
    state_dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(flax_variables)[0]:
        names = tuple(k.key for k in path)
        shape = leaf.shape
        torch_shape = ((shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else
                       (shape[1], shape[0]) if len(shape) == 2 else shape)
        state_dict[weights.torch_names.flax_path_to_torch_key(names)] = rng.normal(
            size=torch_shape).astype(np.float32)
    return state_dict


def test_load_into_avs_model_places_backbone_and_leaves_the_rest(tmp_path):
    model = _tiny_avs_model()
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 5, 32, 32, 3)), jnp.zeros((1, 5, 96, 64)),
        jnp.ones((1, 5)), train=False))
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map(
        lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    backbone = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
    state_dict = _torch_layout_state_dict(backbone, np.random.default_rng(0))
    state_dict["fc.weight"] = np.zeros((10, 64), np.float32)  # dropped: no classifier
    state_dict["bn1.num_batches_tracked"] = np.zeros((), np.int64)  # dropped
    path = tmp_path / "resnet18.safetensors"
    save_numpy_safetensors(state_dict, str(path))

    loaded = weights.load_torchvision_resnet(variables, path)

    np.testing.assert_array_equal(loaded["params"]["backbone"]["conv1"]["kernel"],
                                  state_dict["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        loaded["params"]["backbone"]["layer2_0"]["downsample_1"]["scale"],
        state_dict["layer2.0.downsample.1.weight"])
    np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["layer4_1"]["bn2"]["var"],
                                  state_dict["layer4.1.bn2.running_var"])
    others = lambda v: {c: {k: t for k, t in v[c].items() if k != "backbone"}
                        for c in ("params", "batch_stats")}
    chex.assert_trees_all_equal(others(loaded), others(variables))


def test_the_skip_message_names_an_extra_that_installs_torch():
    import os
    import re
    import tomllib
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    named = re.findall(r"\.\[(\w+)\]", requires_torch.kwargs["reason"])
    assert named and all(any(r.startswith("torch") for r in extras[n]) for n in named), named


def test_merge_params_reports_missing_unexpected_and_shapes():
    params = {"params": {"a": {"kernel": np.zeros((3, 3, 2, 4), np.float32),
                               "bias": np.zeros(4, np.float32)},
                         "b": {"kernel": np.zeros((4, 5), np.float32)}}}
    loaded = {"params": {"a": {"kernel": np.ones((3, 3, 2, 8), np.float32)},
                         "c": {"kernel": np.ones((4, 5), np.float32)}}}
    with pytest.raises(ValueError) as error:
        weights.merge_params(params, loaded, source="ckpt.pth")
    message = str(error.value)
    assert "ckpt.pth" in message
    assert "missing from the checkpoint (2)" in message
    assert "params/a/bias (torch key a.bias)" in message
    assert "params/b/kernel (torch key b.weight)" in message
    assert "unexpected (not in the model) (1)" in message and "params/c/kernel" in message
    assert "params/a/kernel (torch key a.weight): expected [3, 3, 2, 4], got [3, 3, 2, 8]" \
        in message


def test_merge_params_dont_load_keeps_init_and_casts_dtype():
    params = {"params": {"a": {"kernel": np.zeros((2, 2), np.float32),
                               "bias": np.full(2, 7.0, np.float32)},
                         "head": {"kernel": np.full((2, 3), 5.0, np.float32)}}}
    loaded = {"params": {"a": {"kernel": np.arange(4, dtype=np.float16).reshape(2, 2),
                               "bias": np.ones(2, np.float64)},
                         "head": {"kernel": np.ones((9, 9), np.float32)},  # skipped
                         "extra": {"bias": np.ones(1, np.float32)}}}  # skipped
    merged = weights.merge_params(params, loaded, dont_load=(r"params/head/.*", r".*/extra/.*"))
    np.testing.assert_array_equal(merged["params"]["a"]["kernel"], [[0, 1], [2, 3]])
    assert merged["params"]["a"]["kernel"].dtype == np.float32
    assert merged["params"]["a"]["bias"].dtype == np.float32
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], np.full((2, 3), 5.0))
    assert "extra" not in merged["params"]


def test_wrong_file_lists_the_mismatching_keys(tmp_path):
    """A VGGish file given as the ResNet weights: every ResNet leaf is missing, every VGGish
    leaf unexpected."""
    vggish = VGGish(width=0.125)
    vggish_vars = jax.eval_shape(lambda: vggish.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 64))))
    path = tmp_path / "vggish.safetensors"
    save_numpy_safetensors(_torch_layout_state_dict(vggish_vars, np.random.default_rng(0)),
                           str(path))
    resnet = ResNet(depth=18, width=0.125)
    resnet_vars = jax.eval_shape(lambda: resnet.init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 32, 32, 3)), train=False))
    with pytest.raises(ValueError) as error:
        weights.load_torchvision_resnet(resnet_vars, path, prefix=())
    message = str(error.value)
    assert str(path) in message
    assert "params/conv1/kernel (torch key conv1.weight)" in message
    assert "params/features_0/kernel (torch key features.0.weight)" in message


def test_missing_weight_file_names_the_path(tmp_path):
    path = tmp_path / "resnet50-19c8e357.pth"
    with pytest.raises(FileNotFoundError, match="resnet50-19c8e357.pth"):
        weights.read_state_dict(path)


def test_reader_refuses_foreign_pickled_objects(tmp_path):
    """A zip checkpoint whose pickle references anything but state-dict classes is refused
    before the object is built (no code from the file runs)."""
    import pickle
    import zipfile
    path = tmp_path / "module.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(collections.Counter(a=1), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"module\.pth.*collections\.Counter"):
        weights.read_state_dict(path)


def test_reader_rejects_a_non_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        weights.read_state_dict(path)


def test_reader_handles_torch_0_3_legacy_files(tmp_path, monkeypatch):
    """The official resnet50-19c8e357.pth predates torch 0.4: legacy format, tensors pickled as
    ``torch._utils._rebuild_tensor(storage, offset, size, stride)``, storages possibly views.
    This writes such a file byte for byte without torch: a protocol-2 pickle whose globals are
    renamed to the torch names afterwards (GLOBAL opcodes are newline-terminated text)."""
    import io
    import pickle
    import struct
    import sys
    import types

    utils = types.ModuleType("_fake_torch_utils")
    storages = types.ModuleType("_fake_torch")

    def _rebuild_tensor(*args):
        raise AssertionError("only pickled, never called")

    class FloatStorage:
        pass

    _rebuild_tensor.__module__, _rebuild_tensor.__qualname__ = utils.__name__, "_rebuild_tensor"
    FloatStorage.__module__, FloatStorage.__qualname__ = storages.__name__, "FloatStorage"
    utils._rebuild_tensor, storages.FloatStorage = _rebuild_tensor, FloatStorage
    monkeypatch.setitem(sys.modules, utils.__name__, utils)
    monkeypatch.setitem(sys.modules, storages.__name__, storages)

    class Storage:
        def __init__(self, key, numel, view=None):
            self.key, self.numel, self.view = key, numel, view

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride)

        def __reduce__(self):
            return _rebuild_tensor, self.args

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cuda:0", obj.numel, obj.view)
            return None

    root = np.arange(20, dtype=np.float32) * 0.5
    state = collections.OrderedDict([
        # a [3, 2] tensor stored transposed (stride (1, 3)) at offset 2 of storage "root"
        ("fc.weight", Tensor(Storage("root", 20), 2, (3, 2), (1, 3))),
        # a view storage: elements 12..17 of "root", seen through view key "v"
        ("fc.bias", Tensor(Storage("root", 20, ("v", 12, 6)), 1, (4,), (1,))),
    ])
    buffer = io.BytesIO()
    LegacyPickler(buffer, protocol=2).dump(state)
    body = buffer.getvalue()
    for fake, real in ((b"c_fake_torch_utils\n", b"ctorch._utils\n"),
                       (b"c_fake_torch\n", b"ctorch\n")):
        assert fake in body
        body = body.replace(fake, real)
    path = tmp_path / "old.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(header, f, protocol=2)
        f.write(body)
        pickle.dump(["root"], f, protocol=2)
        f.write(struct.pack("<q", root.size) + root.tobytes())

    state_dict = weights.read_state_dict(path)
    if torch is not None:  # torch itself reads the hand-written file the same way
        reference = torch.load(str(path), map_location="cpu", weights_only=False)
        for key, value in reference.items():
            np.testing.assert_array_equal(state_dict[key], value.numpy())
    np.testing.assert_array_equal(state_dict["fc.weight"],
                                  [[root[2], root[5]], [root[3], root[6]], [root[4], root[7]]])
    np.testing.assert_array_equal(state_dict["fc.bias"], root[13:17])
