"""Pretrained weights: read PyTorch / safetensors state dicts and merge them into Flax variables.

AVSBench initialises its visual encoder from torchvision's ImageNet ResNet-50
(``resnet50-19c8e357.pth``) and its frozen audio encoder from torchvggish
(``vggish-10086976.pth``) (spec_cavs §2.5, §3.1). This module imports both into the Flax models of
``jax_cavs.models`` without a torch runtime dependency:

1. ``read_state_dict(path)`` reads a state dict as ``{key: np.ndarray}`` from

   * a ``torch.save`` file in the zip format (torch >= 1.6: ``<archive>/data.pkl`` plus one raw
     file per storage under ``<archive>/data/``),
   * a ``torch.save`` file in the legacy format (torch < 1.6, e.g. the torchvision and
     torchvggish release files: four pickles -- magic number, protocol version, system info,
     the object -- then the list of storage keys, then every storage as an int64 element count
     followed by its raw bytes),
   * a ``.safetensors`` file.

   The pickle is read by a restricted ``Unpickler`` that knows only what a state dict needs
   (``collections.OrderedDict``, ``torch._utils._rebuild_tensor[_v2]``,
   ``torch._utils._rebuild_parameter`` and the typed ``torch.*Storage`` markers); every other
   global is refused, so reading a checkpoint cannot execute code. Tensors are rebuilt as numpy
   arrays from (storage, offset, size, stride).

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

import collections
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
from flax import traverse_util

from jax_cavs.models import torch_names
from jax_cavs.models.audio.vggish import torchvggish_key_to_flax_path
from jax_cavs.models.backbones.resnet import torchvision_key_to_flax_path

StateDict = dict[str, np.ndarray]
KeyToPath = Callable[[str], "tuple[str, ...] | None"]

# torch.<Name>Storage -> numpy dtype of its elements.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_SEP = "/"


# ------------------------------------------------------------------------------------------------
# Reading state dicts.


class _StorageType:
    """Stands for a ``torch.<Name>Storage`` class in the pickle: only its element dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage referenced by the pickle; ``data`` (flat, ``dtype``) is filled in afterwards."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _StorageView:
    """A legacy storage view: ``size`` elements of ``base`` starting at element ``offset``."""

    def __init__(self, base: _Storage, offset: int, size: int):
        self.base, self.offset, self.size = base, offset, size


class _Tensor:
    """A tensor rebuilt lazily (storage bytes are read after the pickle in the legacy format)."""

    def __init__(self, storage: _Storage | _StorageView, offset: int, size: Sequence[int],
                 stride: Sequence[int]):
        if isinstance(storage, _StorageView):
            storage, offset = storage.base, offset + storage.offset
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        numel = int(np.prod(self.size, dtype=np.int64))
        if numel == 0:
            return np.zeros(self.size, self.storage.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= data.size:
            raise ValueError(f"tensor of size {self.size}, stride {self.stride} at offset "
                             f"{self.offset} overruns its storage {self.storage.key!r} of "
                             f"{data.size} elements; the file is truncated or corrupt.")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
        return np.array(view)  # own contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args) -> _Tensor:
    """``torch._utils._rebuild_tensor`` (torch 0.3) and ``_rebuild_tensor_v2`` (>= 0.4, whose
    extra arguments -- requires_grad, backward hooks, metadata -- do not matter here)."""
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused_args):
    """``torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)``."""
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Rebuilds a pickled state dict with numpy in place of torch; refuses every other global."""

    def __init__(self, file, path: str, persistent_load: Callable[[tuple], Any]):
        super().__init__(file)
        self._path = path
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{self._path}: the checkpoint pickles {module}.{name}, which a plain state dict "
            f"does not contain; save the model's state_dict() (a mapping of names to tensors) "
            f"instead of the module or a training checkpoint, or convert it to .safetensors.")

    def persistent_load(self, saved_id):
        return self._persistent_load(saved_id)


def _storage_ref(saved_id: tuple, storages: dict[str, _Storage], path: str):
    """Resolves ``('storage', storage_type, key, location, numel[, view_metadata])``."""
    kind = saved_id[0].decode() if isinstance(saved_id[0], bytes) else saved_id[0]
    if kind != "storage" or len(saved_id) not in (5, 6) or not isinstance(saved_id[1],
                                                                          _StorageType):
        raise pickle.UnpicklingError(f"{path}: unsupported persistent id {saved_id[:2]!r}; only "
                                     f"tensor storages are expected in a state dict.")
    storage_type, key, numel = saved_id[1], str(saved_id[2]), int(saved_id[4])
    if key not in storages:
        storages[key] = _Storage(key, storage_type.dtype, numel)
    storage = storages[key]
    view_metadata = saved_id[5] if len(saved_id) == 6 else None
    if view_metadata is not None:
        _, offset, size = view_metadata
        return _StorageView(storage, int(offset), int(size))
    return storage


def _materialise(obj: Any, path: str) -> StateDict:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                         f"{type(obj).__name__}.")
    state_dict, bad = {}, []
    for key, value in obj.items():
        if isinstance(value, _Tensor):
            state_dict[str(key)] = value.to_numpy()
        else:
            bad.append(f"{key!r} ({type(value).__name__})")
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {', '.join(bad)}. Pass the "
                         f"model's state_dict() itself (e.g. checkpoint['state_dict']), re-saved "
                         f"alone.")
    return state_dict


def _read_zip_state_dict(path: str) -> StateDict:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a torch zip checkpoint holds exactly one "
                             f"'<archive>/data.pkl'; found {pickles or 'none'}.")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = (archive.read(prefix + "byteorder").decode().strip()
                     if prefix + "byteorder" in names else "little")
        storages: dict[str, _Storage] = {}
        unpickler = _StateDictUnpickler(archive.open(pickles[0]), path,
                                        lambda pid: _storage_ref(pid, storages, path))
        obj = unpickler.load()
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise ValueError(f"{path}: storage {member!r} is missing from the archive.")
            dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
            raw = archive.read(member)
            if len(raw) < storage.numel * dtype.itemsize:
                raise ValueError(f"{path}: storage {member!r} has {len(raw)} bytes, expected "
                                 f"{storage.numel * dtype.itemsize}; the file is truncated.")
            storage.data = np.frombuffer(raw, dtype, storage.numel).astype(storage.dtype)
    return _materialise(obj, path)


def _read_legacy_state_dict(path: str) -> StateDict:
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as error:  # any failure here means "not this format"
            raise ValueError(f"{path}: neither a torch zip checkpoint nor a legacy torch.save "
                             f"file ({error}).") from error
        if magic != _LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path}: not a torch checkpoint (no torch.save magic number).")
        version = pickle.load(f)
        if version != _LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: legacy torch.save protocol {version}, expected "
                             f"{_LEGACY_PROTOCOL_VERSION}.")
        sys_info = pickle.load(f)
        storages: dict[str, _Storage] = {}
        obj = _StateDictUnpickler(f, path, lambda pid: _storage_ref(pid, storages, path)).load()
        keys = [str(k) for k in pickle.load(f)]
        byteorder = "<" if sys_info.get("little_endian", True) else ">"
        for key in keys:
            if key not in storages:
                raise ValueError(f"{path}: storage {key!r} is listed but no tensor uses it.")
            storage = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"{path}: truncated before storage {key!r}.")
            (numel,) = struct.unpack(byteorder + "q", header)
            dtype = storage.dtype.newbyteorder(byteorder)
            raw = f.read(numel * dtype.itemsize)
            if numel < storage.numel or len(raw) != numel * dtype.itemsize:
                raise ValueError(f"{path}: storage {key!r} is truncated ({len(raw)} bytes, "
                                 f"expected {storage.numel * dtype.itemsize}).")
            storage.data = np.frombuffer(raw, dtype).astype(storage.dtype)
    return _materialise(obj, path)


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Reads a PyTorch state dict into numpy arrays, without torch.

    Args:
        path: a ``.safetensors`` file, or a ``torch.save`` file of a state dict (zip or legacy
            format, any extension, e.g. ``resnet50-19c8e357.pth``).

    Returns:
        ``{key: array}`` in the PyTorch layout (e.g. ``conv1.weight`` [64, 3, 7, 7] float32).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError / pickle.UnpicklingError: the file is not a state dict (message names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weight file {path!r} does not exist. Download it (torchvision ResNet-50: "
            f"https://download.pytorch.org/models/resnet50-19c8e357.pth, torchvggish: "
            f"https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
            f"vggish-10086976.pth) and set the config field to its path.")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file  # local: only this branch needs it
        return dict(load_file(path))
    if zipfile.is_zipfile(path):
        return _read_zip_state_dict(path)
    return _read_legacy_state_dict(path)


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
