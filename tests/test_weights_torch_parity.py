"""Pretrained-weight import (jax_cavs.models.weights) vs PyTorch: outputs of the converted
models equal those of the PyTorch references, and ResNet-50's names and shapes match.

The parity tests build torchvision-style ResNets and a torchvggish-style VGG in PyTorch with the
exact parameter names of those libraries (torchvision itself is not a dependency), save their
state dicts in the three supported formats (torch zip, legacy torch.save, safetensors), convert
them with the torch-free reader, and compare the Flax model's outputs with PyTorch's (eval mode).
They need PyTorch, part of the ``dev`` extra (``pip install -e '.[dev]'``), and are skipped
without it (the skip message names that extra); the reader/merge tests of test_weights.py use
numpy and safetensors only.

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

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cavs.models import weights
from jax_cavs.models.audio.vggish import VGGish
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


def test_the_skip_message_names_an_extra_that_installs_torch():
    import os
    import re
    import tomllib
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    named = re.findall(r"\.\[(\w+)\]", requires_torch.kwargs["reason"])
    assert named and all(any(r.startswith("torch") for r in extras[n]) for n in named), named
