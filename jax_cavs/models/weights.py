"""Pretrained weights: read PyTorch / safetensors state dicts and merge them into Flax variables.

AVSBench initialises its visual encoder from torchvision's ImageNet ResNet-50
(``resnet50-19c8e357.pth``) and its frozen audio encoder from torchvggish
(``vggish-10086976.pth``) (spec_cavs §2.5, §3.1). This module imports both into the Flax models of
``jax_cavs.models`` without a torch runtime dependency:

1. ``read_state_dict(path)`` (``models.torch_state_dict``) reads a ``torch.save`` file (zip or
   legacy format) or a ``.safetensors`` file as ``{key: np.ndarray}`` with a restricted
   unpickler that refuses every global a state dict does not need.

2. ``state_dict_to_variables(state_dict, key_to_path)`` renames every key into a Flax variable
   path with the model's mapping (``torchvision_key_to_flax_path``,
   ``torchvggish_key_to_flax_path``) and transposes into the Flax layout
   (``torch_names.torch_to_flax_layout``: conv OIHW -> HWIO, linear [out, in] -> [in, out]).
   BatchNorm running statistics land in ``batch_stats``. VGGish needs no permutation of its first
   FC weight: torchvggish transposes the conv output to [N, 6, 4, 512] (channels-last) before
   ``view``, which is exactly the order of the Flax model's reshape (spec §2.5).

3. ``merge_params(params, loaded, dont_load)`` (big_vision's ``merge_params``) puts the loaded
   values into the initialised tree, leaving the ``dont_load`` regexes at their init values, and
   fails with the lists of missing / unexpected keys and every shape mismatch.

``load_torchvision_resnet`` and ``load_torchvggish`` chain the three for the sub-model at a prefix
of the full model's variables (``('backbone',)`` and ``('audio_encoder',)`` in ``AVSModel``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from jax_cavs.models import torch_names
from jax_cavs.models.torch_state_dict import read_state_dict
from jax_cavs.models.audio.vggish import torchvggish_key_to_flax_path
from jax_cavs.models.backbones.resnet import torchvision_key_to_flax_path

KeyToPath = Callable[[str], "tuple[str, ...] | None"]

_SEP = "/"


# ------------------------------------------------------------------------------------------------
# Converting and merging.


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray], key_to_path: KeyToPath,
                            *, source: str = "checkpoint") -> dict[str, Any]:
    """Renames and transposes a PyTorch state dict into a nested Flax variables dict.

    Args:
        state_dict: ``{torch key: array}`` in the PyTorch layout.
        key_to_path: torch key -> Flax path with the collection first (e.g.
            ``torchvision_key_to_flax_path``), or ``None`` for keys without a counterpart (dropped).
        source: the file name for error messages.

    Returns:
        ``{'params': {...}, 'batch_stats': {...}}`` (collections that occur), arrays in the Flax
        layout.

    Raises:
        ValueError: listing every key the mapping rejects (not a key of this model's family).
    """
    flat, rejected = {}, []
    for key, value in state_dict.items():
        try:
            path = key_to_path(key)
        except ValueError as error:
            rejected.append(f"  {key}: {error}")
            continue
        if path is not None:
            flat[path] = torch_names.torch_to_flax_layout(value)
    if rejected:
        raise ValueError(f"{source}: keys that are not parameters of the target model "
                         f"(wrong file?):\n" + "\n".join(rejected))
    return traverse_util.unflatten_dict(flat)


def _describe(name: str) -> str:
    """'params/layer1_0/conv1/kernel' -> that name plus its torch key, when it has one."""
    try:
        return f"{name} (torch key {torch_names.flax_path_to_torch_key(tuple(name.split(_SEP)))})"
    except ValueError:
        return name


def merge_params(params: Mapping[str, Any], loaded: Mapping[str, Any],
                 dont_load: Sequence[str] = (), *, source: str = "checkpoint") -> dict[str, Any]:
    """Returns ``params`` with every leaf replaced by its counterpart in ``loaded``.

    Mirrors big_vision's ``merge_params``: leaf names are '/'-joined paths of the trees (e.g.
    ``params/layer1_0/conv1/kernel``); a name matched (``re.fullmatch``) by a ``dont_load`` pattern
    keeps its value from ``params`` and may be absent from either tree.

    Args:
        params: the initialised tree (e.g. a model's variables); gives the structure and dtypes
            (leaves need ``.shape`` and ``.dtype``: arrays, or ``jax.ShapeDtypeStruct`` from
            ``jax.eval_shape``).
        loaded: tree of loaded values, same naming.
        dont_load: regexes of leaves not to load.
        source: name of the checkpoint for error messages.

    Returns:
        A new nested dict with the structure of ``params``; loaded values are cast to the
        initialised leaf's dtype.

    Raises:
        ValueError: listing the leaves of ``params`` missing from ``loaded``, the leaves of
            ``loaded`` that ``params`` lacks, and every (name, expected shape, got shape)
            mismatch, each with its torch key where it has one.
    """
    patterns = [re.compile(p) for p in dont_load]

    def skipped(name: str) -> bool:
        return any(p.fullmatch(name) for p in patterns)

    inited = traverse_util.flatten_dict(dict(params), sep=_SEP)
    given = traverse_util.flatten_dict(dict(loaded), sep=_SEP)
    missing = sorted(n for n in inited.keys() - given.keys() if not skipped(n))
    unexpected = sorted(n for n in given.keys() - inited.keys() if not skipped(n))
    mismatched, merged = [], {}
    for name, init_value in inited.items():
        if name not in given or skipped(name):
            merged[name] = init_value
            continue
        value = np.asarray(given[name])
        if tuple(value.shape) != tuple(init_value.shape):
            mismatched.append(f"  {_describe(name)}: expected {list(init_value.shape)}, "
                              f"got {list(value.shape)}")
            continue
        merged[name] = value.astype(init_value.dtype)
    if missing or unexpected or mismatched:
        sections = [f"{source} does not match the model (patterns not loaded: "
                    f"{list(dont_load)}):"]
        for title, lines in (("missing from the checkpoint",
                              [f"  {_describe(n)}" for n in missing]),
                             ("unexpected (not in the model)",
                              [f"  {_describe(n)}" for n in unexpected]),
                             ("shape mismatch (Flax layout)", mismatched)):
            if lines:
                sections.append(f"{title} ({len(lines)}):\n" + "\n".join(lines))
        sections.append("Check the model config (depth/width) against the file, or add "
                        "patterns to dont_load for leaves to keep at their init values.")
        raise ValueError("\n".join(sections))
    return traverse_util.unflatten_dict(merged, sep=_SEP)


def load_pretrained(variables: Mapping[str, Any], path: str | os.PathLike,
                    key_to_path: KeyToPath, *, prefix: Sequence[str] = (),
                    dont_load: Sequence[str] = ()) -> dict[str, Any]:
    """Loads a PyTorch checkpoint into the sub-model of ``variables`` at ``prefix``.

    Args:
        variables: the full model's variables (``{'params': ..., 'batch_stats': ...}``).
        path: the ``.pth`` / ``.safetensors`` file.
        key_to_path: the sub-model's torch key -> Flax path mapping.
        prefix: module path of the sub-model in every collection (e.g. ``('backbone',)``).
        dont_load: regexes over the sub-model's leaf names, collection first (e.g.
            ``'batch_stats/.*'`` or ``'params/embeddings_4/.*'``).

    Returns:
        ``variables`` with the sub-model's leaves replaced; everything else unchanged.
    """
    path = os.fspath(path)
    loaded = state_dict_to_variables(read_state_dict(path), key_to_path, source=path)
    variables = {collection: dict(tree) for collection, tree in variables.items()}
    sub = {}
    for collection in loaded.keys() | variables.keys():
        tree = variables.get(collection, {})
        for module in prefix:
            tree = tree.get(module, {}) if isinstance(tree, Mapping) else {}
        if tree or collection in loaded:
            sub[collection] = tree
    if not any(sub.values()):
        raise ValueError(f"{path}: the model's variables have no sub-model at "
                         f"{'/'.join(prefix) or 'the top level'} (collections "
                         f"{sorted(variables)}); check the prefix.")
    merged = merge_params(sub, loaded, dont_load, source=path)
    for collection, tree in merged.items():
        flat = traverse_util.flatten_dict(variables.get(collection, {}))
        flat = {k: v for k, v in flat.items() if k[:len(prefix)] != tuple(prefix)}
        flat.update({(*prefix, *k): v for k, v in traverse_util.flatten_dict(tree).items()})
        variables[collection] = traverse_util.unflatten_dict(flat)
    return variables


def load_torchvision_resnet(variables: Mapping[str, Any], path: str | os.PathLike, *,
                            prefix: Sequence[str] = ("backbone",),
                            dont_load: Sequence[str] = ()) -> dict[str, Any]:
    """torchvision ResNet state dict (e.g. ``resnet50-19c8e357.pth``) -> ``ResNet`` at
    ``prefix``; ``fc.*`` and ``num_batches_tracked`` are dropped."""
    return load_pretrained(variables, path, torchvision_key_to_flax_path, prefix=prefix,
                           dont_load=dont_load)


def load_torchvggish(variables: Mapping[str, Any], path: str | os.PathLike, *,
                     prefix: Sequence[str] = ("audio_encoder",),
                     dont_load: Sequence[str] = ()) -> dict[str, Any]:
    """torchvggish state dict (``vggish-10086976.pth``) -> ``VGGish`` at ``prefix``; the PCA
    post-processor's ``pproc.*`` keys are dropped."""
    return load_pretrained(variables, path, torchvggish_key_to_flax_path, prefix=prefix,
                           dont_load=dont_load)
