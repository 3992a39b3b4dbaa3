"""Read PyTorch / safetensors state dicts as numpy arrays, without torch and without running
code (``models.weights`` merges them into Flax variables).

``read_state_dict(path)`` reads a state dict as ``{key: np.ndarray}`` from

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
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

StateDict = dict[str, np.ndarray]

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


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Reads the legacy format's plain pickles (ints, the system-info dict, the storage keys),
    which need no global at all; any global is refused."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"{self._path}: the torch.save header pickles "
                                     f"{module}.{name}; a checkpoint header holds plain values "
                                     f"only, so this is not a torch checkpoint.")


def _header_value(f, path: str):
    return _NoGlobalsUnpickler(f, path).load()


def _read_legacy_state_dict(path: str) -> StateDict:
    with open(path, "rb") as f:
        try:
            magic = _header_value(f, path)
        except Exception as error:  # any failure here means "not this format"
            raise ValueError(f"{path}: neither a torch zip checkpoint nor a legacy torch.save "
                             f"file ({error}).") from error
        if magic != _LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path}: not a torch checkpoint (no torch.save magic number).")
        version = _header_value(f, path)
        if version != _LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: legacy torch.save protocol {version}, expected "
                             f"{_LEGACY_PROTOCOL_VERSION}.")
        sys_info = _header_value(f, path)
        storages: dict[str, _Storage] = {}
        obj = _StateDictUnpickler(f, path, lambda pid: _storage_ref(pid, storages, path)).load()
        keys = [str(k) for k in _header_value(f, path)]
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
