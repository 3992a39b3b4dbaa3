"""VGGish audio encoder on 96x64 log-mel patches, channels-last (spec §2.5).

Topology (torchvggish ``VGG``, as used by AVSBench), for ``width`` w (1.0 = VGGish):

    [N, 96, 64] -> [N, 96, 64, 1]
    conv3x3(64w)+ReLU, maxpool2                      -> [N, 48, 32, 64w]
    conv3x3(128w)+ReLU, maxpool2                     -> [N, 24, 16, 128w]
    conv3x3(256w)+ReLU, conv3x3(256w)+ReLU, maxpool2 -> [N, 12, 8, 256w]
    conv3x3(512w)+ReLU, conv3x3(512w)+ReLU, maxpool2 -> [N, 6, 4, 512w]
    flatten (h, w, c order = torchvggish's transpose to [N, 6, 4, 512] before ``view``)
    FC(4096w)+ReLU, FC(4096w)+ReLU, FC(128)+ReLU     -> [N, 128]

No PCA post-processing (AVSBench sets ``POSTPROCESS_LOG_MEL_WITH_PCA=False``). The embedding size
stays 128 at every width because TPAVI's ``W_align`` consumes 128-d audio (spec §3.3).

Parameter names mirror torchvggish's state dict (``nn.Sequential`` indices glued with ``_``, see
``jax_cavs.models.torch_names``):

    torchvggish key        Flax variable path
    features.0.weight      ('params', 'features_0', 'kernel')      conv 1   (also .3 .6 .8 .11 .13)
    embeddings.0.bias      ('params', 'embeddings_0', 'bias')      FC 1     (also .2 .4)

Because the flatten order is channels-last in both, ``embeddings.0.weight`` imports by a plain
transpose. AVSBench keeps VGGish frozen (eval, no_grad): ``frozen=True`` puts a
``stop_gradient`` on the embedding, so no gradient reaches these parameters. (An optimizer with
weight decay must still mask them out.) Random init is He-normal (fan-in), not PyTorch's default,
so that a randomly initialised encoder (no pretrained weights, e.g. on the synthetic benchmark)
still passes its input through nine ReLU layers without the signal collapsing to the biases.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_cavs.models import torch_names
from jax_cavs.models.initializers import he_normal_fan_in_init

VGGISH_NUM_FRAMES = 96
VGGISH_NUM_BANDS = 64
VGGISH_EMBEDDING_SIZE = 128

# torchvggish ``make_layers`` config: channel counts and "M" (maxpool); each conv is followed by
# a ReLU, so conv k sits at Sequential index (position of k in the expanded layer list).
VGGISH_FEATURE_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
VGGISH_HIDDEN_UNITS = 4096


def vggish_channels(base: int, width: float) -> int:
    """round(base·width), at least 1."""
    channels = int(round(base * width))
    if channels < 1:
        raise ValueError(f"VGGish width={width} leaves a layer of {base} channels with {channels}; "
                         f"increase width (model config field audio_width).")
    return channels


class VGGish(nn.Module):
    """VGGish embedding network (see the module docstring).

    Attributes:
        width: multiplier on the conv channels and the two hidden FC sizes.
        frozen: stop gradients at the output (AVSBench keeps VGGish frozen).
        dtype: compute dtype (parameters stay float32).
    """
    width: float = 1.0
    frozen: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, log_mel: jnp.ndarray) -> jnp.ndarray:
        """Embeds log-mel examples.

        Args:
            log_mel: [N, 96, 64] log-mel patches (0.96 s, 64 bands).

        Returns:
            [N, 128] embeddings (after the final ReLU).
        """
        if log_mel.ndim != 3 or log_mel.shape[1:] != (VGGISH_NUM_FRAMES, VGGISH_NUM_BANDS):
            raise ValueError(f"VGGish expects log-mel of shape [N, {VGGISH_NUM_FRAMES}, "
                             f"{VGGISH_NUM_BANDS}], got {log_mel.shape}; check the batch's "
                             f"'audio' field ([B, T, 96, 64]).")
        x = log_mel[..., None]
        index = 0
        for entry in VGGISH_FEATURE_CONFIG:
            if entry == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                index += 1
            else:
                x = nn.Conv(vggish_channels(entry, self.width), (3, 3), padding=((1, 1), (1, 1)),
                            kernel_init=he_normal_fan_in_init, dtype=self.dtype,
                            name=f"features_{index}")(x)
                x = nn.relu(x)
                index += 2  # conv, ReLU
        x = x.reshape(x.shape[0], -1)  # [N, 6·4·512w] in (h, w, c) order
        hidden = vggish_channels(VGGISH_HIDDEN_UNITS, self.width)
        for index, units in zip((0, 2, 4), (hidden, hidden, VGGISH_EMBEDDING_SIZE)):
            x = nn.Dense(units, kernel_init=he_normal_fan_in_init, dtype=self.dtype,
                         name=f"embeddings_{index}")(x)
            x = nn.relu(x)
        return jax.lax.stop_gradient(x) if self.frozen else x


def torchvggish_key_to_flax_path(key: str) -> tuple[str, ...] | None:
    """torchvggish state-dict key -> Flax variable path of ``VGGish`` (module docstring).

    Returns ``None`` for the PCA post-processor's keys (``pproc.*``), which this model does not use.
    """
    if key.startswith("pproc."):
        return None
    return torch_names.torch_key_to_flax_path(key, is_norm=lambda modules: False)
