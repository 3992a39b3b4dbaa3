"""Mechanical mapping between PyTorch state-dict keys and Flax variable paths.

Used by the modules whose pretrained weights come from PyTorch checkpoints (torchvision ResNet,
torchvggish VGGish), so that importing weights is a rename plus a transpose, with no per-layer
tables. The convention:

- A PyTorch key is ``<module path>.<param>``, e.g. ``layer1.0.downsample.1.running_mean``.
- Integer components of the module path (``nn.Sequential`` / ``nn.ModuleList`` indices) are glued
  to the component before them with ``_``: ``layer1.0.downsample.1`` -> ``('layer1_0',
  'downsample_1')``. Consequently a Flax module name may end in ``_<int>`` only when it stands for
  such an index.
- The parameter name depends on the kind of module that holds it:

  =============  ==================================  ==================================
  PyTorch        conv / linear                       batch norm
  =============  ==================================  ==================================
  weight         ('params', ..., 'kernel')           ('params', ..., 'scale')
  bias           ('params', ..., 'bias')             ('params', ..., 'bias')
  running_mean   --                                  ('batch_stats', ..., 'mean')
  running_var    --                                  ('batch_stats', ..., 'var')
  =============  ==================================  ==================================

  ``num_batches_tracked`` has no Flax counterpart (Flax's BatchNorm uses a fixed momentum) and maps
  to ``None``.
- Layout (``torch_to_flax_layout``): conv weight ``[out, in, kh, kw]`` -> kernel
  ``[kh, kw, in, out]``; linear weight ``[out, in]`` -> kernel ``[in, out]``; vectors unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FlaxPath = tuple[str, ...]

_NORM_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_DENSE_LEAVES = {"weight": ("params", "kernel"), "bias": ("params", "bias")}
_FLAX_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                       "mean": "running_mean", "var": "running_var"}


def _glue_indices(components: list[str], key: str) -> tuple[str, ...]:
    """['layer1', '0', 'conv1'] -> ('layer1_0', 'conv1')."""
    modules: list[str] = []
    for component in components:
        if component.isdigit():
            if not modules:
                raise ValueError(f"PyTorch key {key!r} starts with an index; expected a module name.")
            modules[-1] = f"{modules[-1]}_{component}"
        else:
            modules.append(component)
    return tuple(modules)


def torch_key_to_flax_path(key: str, *, is_norm: Callable[[tuple[str, ...]], bool]
                           ) -> FlaxPath | None:
    """Maps a PyTorch state-dict key to a Flax variable path (collection first).

    Args:
        key: e.g. ``"layer1.0.bn1.running_var"``.
        is_norm: given the Flax module path (e.g. ``('layer1_0', 'bn1')``), whether that module is
            a batch norm (decides ``weight`` -> ``scale`` vs ``kernel``).

    Returns:
        e.g. ``('batch_stats', 'layer1_0', 'bn1', 'var')``, or ``None`` for
        ``num_batches_tracked``.

    Raises:
        ValueError: for a malformed key or a parameter name the module kind cannot hold.
    """
    components = key.split(".")
    if len(components) < 2 or not all(components):
        raise ValueError(f"PyTorch key {key!r} is not of the form '<module path>.<param>'.")
    *module_components, leaf = components
    if leaf == "num_batches_tracked":
        return None
    modules = _glue_indices(module_components, key)
    leaves = _NORM_LEAVES if is_norm(modules) else _DENSE_LEAVES
    if leaf not in leaves:
        raise ValueError(f"PyTorch key {key!r}: parameter {leaf!r} is not one of {sorted(leaves)} "
                         f"for module {'.'.join(module_components)!r}.")
    collection, flax_leaf = leaves[leaf]
    return (collection, *modules, flax_leaf)


def flax_path_to_torch_key(path: FlaxPath) -> str:
    """Inverse of ``torch_key_to_flax_path``: ``('params', 'layer1_0', 'conv1', 'kernel')`` ->
    ``"layer1.0.conv1.weight"``."""
    if len(path) < 3 or path[0] not in ("params", "batch_stats") or path[-1] not in _FLAX_LEAF_TO_TORCH:
        raise ValueError(f"Flax path {path!r} is not of the form (collection, *modules, leaf) with "
                         f"collection in ('params', 'batch_stats') and leaf in "
                         f"{sorted(_FLAX_LEAF_TO_TORCH)}.")
    components: list[str] = []
    for module in path[1:-1]:
        name, _, index = module.rpartition("_")
        components.extend([name, index] if name and index.isdigit() else [module])
    return ".".join([*components, _FLAX_LEAF_TO_TORCH[path[-1]]])


def torch_to_flax_layout(value: np.ndarray) -> np.ndarray:
    """Transposes a PyTorch parameter into the Flax layout (see the module docstring).

    Args:
        value: conv weight ``[out, in, kh, kw]``, linear weight ``[out, in]`` or a vector.

    Returns:
        ``[kh, kw, in, out]``, ``[in, out]`` or the vector unchanged.
    """
    value = np.asarray(value)
    if value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
        return np.transpose(value, (1, 0))
    if value.ndim in (0, 1):
        return value
    raise ValueError(f"torch_to_flax_layout: unsupported parameter rank {value.ndim} "
                     f"(shape {value.shape}); expected a 4-D conv, 2-D linear weight or a vector.")
