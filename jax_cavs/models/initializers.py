"""Weight initialisers that reproduce the PyTorch reference models' random init.

The AVSBench model (spec §3) is built from PyTorch modules whose random initialisation differs from
Flax's defaults. Where a layer is trained from scratch (neck, TPAVI, decoder) its starting point
shapes early training, so we reproduce the reference init exactly:

- ``torch_default_kernel_init``: ``nn.Conv*d`` / ``nn.Linear`` default,
  ``kaiming_uniform_(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1/(3·fan_in).
  Flax kernels are ``[kh, kw, in, out]`` / ``[in, out]``, so jax's ``fan_in`` (receptive field × in)
  equals PyTorch's.
- ``torch_default_bias_init(fan_in)``: the matching bias default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  Flax calls bias initialisers with the bias shape only, so the kernel's fan-in is bound here.
- ``kaiming_fan_out_init``: torchvision ResNet / AVSBench ``B2_ResNet`` conv init,
  N(0, 2/fan_out) with fan_out = kh·kw·out.
- ``he_normal_fan_in_init``: N(0, 2/fan_in), used for VGGish (see ``audio/vggish.py``).
- ``normal_init(0.01)``: AVSBench ``Classifier_Module`` (the "ASPP" neck) ``weight.normal_(0, 0.01)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = nn.initializers.Initializer

torch_default_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")
kaiming_fan_out_init: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
he_normal_fan_in_init: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def normal_init(stddev: float) -> Initializer:
    """N(0, stddev²), untruncated (PyTorch's ``tensor.normal_(0, stddev)``)."""
    return nn.initializers.normal(stddev)


def torch_default_bias_init(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default bias init for a layer with this fan-in.

    Args:
        fan_in: the layer's kernel fan-in (kh·kw·in_channels for a conv, in_features for a Linear).
    """
    if fan_in <= 0:
        raise ValueError(f"torch_default_bias_init: fan_in must be positive, got {fan_in}.")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
