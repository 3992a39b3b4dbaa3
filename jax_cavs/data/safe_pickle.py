"""Reading pickles that must hold data only: an ``Unpickler`` that admits a fixed set of
globals and refuses every other one, naming the file and the global.

A pickle runs code through the globals it names (``os.system`` via ``__reduce__``, any
class's constructor), so a file from elsewhere is read with ``RestrictedUnpickler`` and the
short list of globals its format needs. ``load_npy_object(path)`` reads a ``.npy`` written by
``np.save`` of a Python object (a dict, e.g. AV-CIL's released split and feature files
[AVCIL-code utils/gen_audio_features.py l. 52, utils/gen_visual_features.py l. 77], which
the authors read with ``np.load(..., allow_pickle=True).item()``, ours/dataloader_ours.py
l. 21, 31-41). Its payload is the pickle of a 0-d object array, which needs only numpy's
array, dtype and scalar reconstructors (``NUMPY_GLOBALS``); dicts, lists, tuples, strings,
bytes, ints, floats, booleans and None are pickle opcodes, not globals.
(``jax_cavs.models.torch_state_dict`` has its own restricted unpickler for torch
checkpoints: models/ does not import data/.)
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy functions a pickled ndarray / numpy scalar / dtype names, under the module
    names of numpy 1.x (``numpy.core``) and 2.x (``numpy._core``), which both occur in files."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        found[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        found[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        found[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return found


# What pickled numpy arrays, scalars and dtypes need, and nothing else.
NUMPY_GLOBALS = _numpy_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``file`` admitting only the globals of ``allowed``.

    Any other global (a class, ``os.system``, ``builtins.eval``, ...) raises
    ``pickle.UnpicklingError`` with ``refusal(module, name)``: the file, the global, and what
    the file should hold (``expected``). Subclasses may widen ``resolve``.
    """

    def __init__(self, file: BinaryIO, path: str, allowed: Mapping[tuple[str, str], Any],
                 expected: str):
        super().__init__(file)
        self.path, self.allowed, self.expected = path, allowed, expected

    def resolve(self, module: str, name: str) -> Any | None:
        """The object ``module.name`` stands for, or None when it is not admitted."""
        return self.allowed.get((module, name))

    def refusal(self, module: str, name: str) -> str:
        return (f"{self.path}: refused to unpickle the global {module}.{name}; the file should "
                f"hold {self.expected} only, so it is not the expected file or it was tampered "
                f"with (reading it could run code).")

    def find_class(self, module: str, name: str):
        found = self.resolve(module, name)
        if found is None:
            raise pickle.UnpicklingError(self.refusal(module, name))
        return found


def load_npy_object(path: str | os.PathLike, expected: str = "a dict of strings, numbers "
                    "and numpy arrays") -> Any:
    """The object ``np.save(path, obj)`` stored, read without running code.

    Args:
        path: a ``.npy`` file (format 1.0 or 2.0) of an object array (the 0-d array ``np.save``
            makes of a dict gives back the dict itself).
        expected: what the file should hold, for the refusal message.

    Raises:
        FileNotFoundError: no such file. ValueError: not a ``.npy`` file, or not of an object
        array. pickle.UnpicklingError: the pickle names a global beyond ``NUMPY_GLOBALS``, or
        is corrupt (the message names the file).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} is not supported")
            shape, _, dtype = read_header(f)
        except ValueError as error:
            raise ValueError(f"{path}: not a readable .npy file ({error}).") from error
        if dtype != np.dtype(object):
            raise ValueError(f"{path}: holds a plain {dtype} array of shape {shape}, but "
                             f"{expected} (np.save of a Python object) was expected.")
        try:
            array = RestrictedUnpickler(f, path, NUMPY_GLOBALS, expected).load()
        except pickle.UnpicklingError:
            raise
        except Exception as error:  # truncated or corrupt pickle data
            raise pickle.UnpicklingError(f"{path}: corrupt pickle payload ({type(error).__name__}"
                                         f": {error}).") from error
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(object):
        raise ValueError(f"{path}: the payload is a {type(array).__name__}, not the object "
                         f"array np.save writes.")
    return array.item() if array.shape == () else array
