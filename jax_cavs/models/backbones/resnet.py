"""ResNet-18/34/50 visual encoder in the torchvision layout, channels-last (spec §3.1).

AVSBench uses a standard torchvision ResNet-50 (``B2_ResNet`` minus its unused ``layer3_2`` /
``layer4_2`` branches) initialised from ImageNet, with trainable BatchNorm in train mode, and taps
the outputs of ``layer1``..``layer4``. This module reproduces that topology exactly (stride on the
3x3 conv of the bottleneck, i.e. "ResNet v1.5"; PyTorch's symmetric paddings written explicitly,
because Flax's 'SAME' pads stride-2 convs asymmetrically), adds depth 18/34 (BasicBlock) and a
``width`` multiplier on the 64 base channels for small CPU models.

Parameter naming mirrors torchvision's state dict, so ImageNet weights import by a mechanical
rename (``jax_cavs.models.torch_names``): blocks are top-level submodules named ``layer{s}_{b}``.

    torchvision key                      Flax variable path
    conv1.weight                         ('params', 'conv1', 'kernel')
    bn1.weight / bn1.bias                ('params', 'bn1', 'scale' / 'bias')
    bn1.running_mean / running_var       ('batch_stats', 'bn1', 'mean' / 'var')
    layer1.0.conv1.weight                ('params', 'layer1_0', 'conv1', 'kernel')
    layer2.0.downsample.0.weight         ('params', 'layer2_0', 'downsample_0', 'kernel')
    layer2.0.downsample.1.running_var    ('batch_stats', 'layer2_0', 'downsample_1', 'var')
    *.num_batches_tracked, fc.*          None (no counterpart; the classifier is not built)

Paths are relative to this module (inside ``AVSModel`` prefix them with ``'backbone'``).

BatchNorm: PyTorch momentum 0.1 (new = 0.9·old + 0.1·batch) is Flax momentum 0.9; eps 1e-5; the
batch variance is computed two-pass, E[(x − E x)²], as PyTorch does (Flax's default
E[x²] − (E x)² loses precision when |mean| >> std). One known difference remains: PyTorch updates
``running_var`` with the unbiased batch variance, Flax with the biased one (relative difference
1/(n−1) for n = N·h·w reduced values).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jax_cavs.models import torch_names
from jax_cavs.models.initializers import kaiming_fan_out_init

# Blocks per stage, and whether the stage uses the Bottleneck (expansion 4) or BasicBlock (1).
RESNET_STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
RESNET_BOTTLENECK = {18: False, 34: False, 50: True}


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    """Bias-free conv with PyTorch's symmetric padding (kernel // 2) and torchvision's init."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False,
                   kernel_init=kaiming_fan_out_init, dtype=dtype, name=name)


def _batch_norm(train: bool, name: str, dtype: Any) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        use_fast_variance=False, dtype=dtype, name=name)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    Attributes:
        planes: output channels.
        stride: stride of ``conv1`` (and of the projection shortcut).
    """
    planes: int
    stride: int = 1
    dtype: Any = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """[B, h, w, c_in] -> [B, h/stride, w/stride, planes]."""
        out = _conv(self.planes, 3, self.stride, "conv1", self.dtype)(x)
        out = nn.relu(_batch_norm(train, "bn1", self.dtype)(out))
        out = _conv(self.planes, 3, 1, "conv2", self.dtype)(out)
        out = _batch_norm(train, "bn2", self.dtype)(out)
        return nn.relu(out + _shortcut(x, self.planes, self.stride, train, self.dtype))


class Bottleneck(nn.Module):
    """ResNet-50 block (stride on the 3x3 conv, torchvision layout):
    relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)).

    Attributes:
        planes: bottleneck width; the block outputs ``4 * planes`` channels.
        stride: stride of ``conv2`` (and of the projection shortcut).
    """
    planes: int
    stride: int = 1
    dtype: Any = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """[B, h, w, c_in] -> [B, h/stride, w/stride, 4·planes]."""
        out = _conv(self.planes, 1, 1, "conv1", self.dtype)(x)
        out = nn.relu(_batch_norm(train, "bn1", self.dtype)(out))
        out = _conv(self.planes, 3, self.stride, "conv2", self.dtype)(out)
        out = nn.relu(_batch_norm(train, "bn2", self.dtype)(out))
        out = _conv(self.planes * 4, 1, 1, "conv3", self.dtype)(out)
        out = _batch_norm(train, "bn3", self.dtype)(out)
        return nn.relu(out + _shortcut(x, self.planes * 4, self.stride, train, self.dtype))


def _shortcut(x: jnp.ndarray, features: int, stride: int, train: bool, dtype: Any) -> jnp.ndarray:
    """Identity, or torchvision's ``downsample = Sequential(conv1x1(stride), BN)`` when the shape
    changes. Called inside a block's compact ``__call__``, so the submodules belong to the block."""
    if stride == 1 and x.shape[-1] == features:
        return x
    x = _conv(features, 1, stride, "downsample_0", dtype)(x)
    return _batch_norm(train, "downsample_1", dtype)(x)


class ResNet(nn.Module):
    """torchvision ResNet without the classifier; returns the four stage outputs.

    Attributes:
        depth: 18, 34 or 50.
        width: multiplier on the 64 base channels (1.0 = torchvision).
        dtype: compute dtype (parameters stay float32).
        remat_blocks: wrap every block in ``nn.remat`` (recompute activations in the backward pass).
    """
    depth: int = 50
    width: float = 1.0
    dtype: Any = jnp.float32
    remat_blocks: bool = False

    @nn.compact
    def __call__(self, images: jnp.ndarray, *, train: bool
                 ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Encodes a batch of images.

        Args:
            images: [B, H, W, 3] (ImageNet-normalised).
            train: BatchNorm uses batch statistics (and updates ``batch_stats``) when True.

        Returns:
            (x1, x2, x3, x4): [B, H/4, W/4, c], [B, H/8, W/8, 2c], [B, H/16, W/16, 4c],
            [B, H/32, W/32, 8c] with c = base·expansion, base = round(64·width) (for ResNet-50 at
            224: 256@56, 512@28, 1024@14, 2048@7).
        """
        if self.depth not in RESNET_STAGE_SIZES:
            raise ValueError(f"ResNet.depth={self.depth} is not supported; use one of "
                             f"{sorted(RESNET_STAGE_SIZES)} (model config field backbone_depth).")
        base = resnet_base_channels(self.width)
        block_cls = Bottleneck if RESNET_BOTTLENECK[self.depth] else BasicBlock
        if self.remat_blocks:
            block_cls = nn.remat(block_cls, static_argnums=(2,))  # (self, x, train): train static

        x = _conv(base, 7, 2, "conv1", self.dtype)(images)
        x = nn.relu(_batch_norm(train, "bn1", self.dtype)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf
        stage_outputs = []
        for stage, num_blocks in enumerate(RESNET_STAGE_SIZES[self.depth]):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = block_cls(planes=base * 2 ** stage, stride=stride, dtype=self.dtype,
                              name=f"layer{stage + 1}_{block}")(x, train)
            stage_outputs.append(x)
        return tuple(stage_outputs)


def resnet_base_channels(width: float) -> int:
    """Channels of ``conv1`` / planes of ``layer1``: round(64·width), at least 1."""
    base = int(round(64 * width))
    if base < 1:
        raise ValueError(f"ResNet width={width} gives {base} base channels; use width >= 1/64 "
                         f"(model config field backbone_width).")
    return base


def resnet_stage_channels(depth: int, width: float) -> tuple[int, int, int, int]:
    """Channels of the four stage outputs, e.g. (256, 512, 1024, 2048) for ResNet-50."""
    expansion = 4 if RESNET_BOTTLENECK[depth] else 1
    base = resnet_base_channels(width)
    return tuple(base * 2 ** stage * expansion for stage in range(4))


def _is_resnet_norm(modules: tuple[str, ...]) -> bool:
    return modules[-1].startswith("bn") or modules[-1] == "downsample_1"


def torchvision_key_to_flax_path(key: str) -> tuple[str, ...] | None:
    """torchvision ResNet state-dict key -> Flax variable path of ``ResNet`` (module docstring).

    Returns ``None`` for keys the Flax model has no counterpart for (``fc.*``,
    ``*.num_batches_tracked``). Raises ``ValueError`` for keys that are not ResNet keys.
    """
    if key.startswith("fc."):
        return None
    return torch_names.torch_key_to_flax_path(key, is_norm=_is_resnet_norm)
