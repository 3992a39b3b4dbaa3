"""The files of AV-CIL's released layout: where they are, how they are read and checked, and
the per-process cache of the feature files (``release`` builds on this).

Layout of one dataset folder ``DIR/<folder>`` (DIR = the authors' ``data/``; paths as the
authors' loader builds them, ours/dataloader_ours.py l. 18-41, the same in every baseline's
dataloader):

* ``category_encode_dict.npy``: {class name: class id}, ids 0..C-1; the order *is* the fixed
  "random" class split (task t = ids [t k, (t + 1) k)) [spec_family §A2];
* ``all_classId_vid_dict.npy``: {split: {class id: [vid, ...]}}, the split membership; a
  step's clips are the concatenation over its class ids in id order (l. 62-73);
* ``all_id_category_dict.npy``: {split: {vid: class name}}, each clip's label (l. 80-83);
* ``audio_pretrained_feature/audio_pretrained_feature_dict.npy``: {vid: float32 [768]}
  (AudioMAE, utils/gen_audio_features.py l. 28-52);
* visual, VideoMAE ``last_hidden_state`` [1568, 768] per vid (utils/gen_visual_features.py
  l. 39-79): AVE as ``visual_pretrained_feature/visual_pretrained_feature_dict.npy`` {vid:
  array}, K-S and VS100 as ``visual_pretrained_feature/visual_features.h5`` (one dataset per
  vid, read with ``[()]``, dataloader_ours.py l. 85-89).

Split names are 'train', 'val', 'test' (l. 43-53). The ``.npy`` files are pickles (``np.save``
of a dict); they are read with ``jax_cavs.data.safe_pickle.load_npy_object``, never with
``allow_pickle=True``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jax_cavs.data.safe_pickle import load_npy_object

SPLITS = ("train", "val", "test")
CLASS_FILE = "category_encode_dict.npy"
MEMBERSHIP_FILE = "all_classId_vid_dict.npy"
LABEL_FILE = "all_id_category_dict.npy"
AUDIO_FILE = os.path.join("audio_pretrained_feature", "audio_pretrained_feature_dict.npy")
VISUAL_DICT_FILE = os.path.join("visual_pretrained_feature", "visual_pretrained_feature_dict.npy")
VISUAL_H5_FILE = os.path.join("visual_pretrained_feature", "visual_features.h5")
# The visual file each release ships (utils/gen_visual_features.py l. 39-43); the other form
# is read too when only it is present (e.g. AVE's dict converted to .h5 to save memory).
NATIVE_VISUAL = {"AVE": VISUAL_DICT_FILE, "synth_av_ci": VISUAL_DICT_FILE,
                 "kinetics-sounds": VISUAL_H5_FILE, "VGGSound_100": VISUAL_H5_FILE}
_ARCHIVES = {"AVE": "AVE_features.zip",
             "kinetics-sounds": "KS_features.zip.aa, .ab, .ac (concatenate them, then unzip)",
             "VGGSound_100": "VS100_features.zip.aa to .af (concatenate them, then unzip)"}
_HF = "https://huggingface.co/datasets/wiberg/AV-CIL_features"
_REPO = "https://github.com/weiguoPian/AV-CIL_ICCV2023"


def fix_for(folder: str, relative: str) -> str:
    """How to obtain file ``relative`` of dataset folder ``folder``."""
    if folder == "synth_av_ci":
        return ("the embedded data is incomplete: delete its folder and let "
                "synth.ensure_synth_av_ci build it again")
    if relative in (CLASS_FILE, MEMBERSHIP_FILE, LABEL_FILE):
        return f"copy it from the authors' repository {_REPO} (data/{folder}/{relative})"
    archive = _ARCHIVES.get(folder, "the features archive of this dataset")
    return (f"download the features from the HF dataset wiberg/AV-CIL_features ({_HF}: "
            f"{archive}) and put them into DIR/{folder}/{os.path.dirname(relative)}/")


def require(folder_path: str, relative: str) -> str:
    """The path of ``relative`` under the dataset folder; FileNotFoundError if missing."""
    path = os.path.join(folder_path, relative)
    if not os.path.isfile(path):
        folder = os.path.basename(os.path.normpath(folder_path))
        raise FileNotFoundError(f"AV-CIL release file {path} is missing: "
                                f"{fix_for(folder, relative)}.")
    return path


def malformed(path: str, what: str) -> ValueError:
    """The one-line error of a release file that is there but wrong."""
    folder_path = os.path.dirname(path)
    if os.path.basename(folder_path) in ("audio_pretrained_feature", "visual_pretrained_feature"):
        folder_path = os.path.dirname(folder_path)
    folder = os.path.basename(os.path.normpath(folder_path))
    return ValueError(f"AV-CIL release file {path} is malformed: {what}; "
                      f"{fix_for(folder, os.path.relpath(path, folder_path))}.")


# ------------------------------------------------------------------------------------------
# The per-process cache: a feature dict is read once per process (the authors load the whole
# dict in every loader, dataloader_ours.py l. 21, 31); an .h5 file is opened once per process
# (never shared across a fork: h5py handles are not fork-safe).

_CACHE: dict[tuple, Any] = {}


def _file_key(path: str) -> tuple:
    """(path, size, mtime): a file rewritten in place is read again (one stat per access)."""
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def load_dict(path: str, what: str) -> dict:
    """The dict a ``.npy`` pickle holds (cached per process); errors name the file."""
    key = ("npy",) + _file_key(path)
    if key not in _CACHE:
        try:
            value = load_npy_object(path, what)
        except ValueError as error:
            raise malformed(path, str(error).removeprefix(f"{path}: ").rstrip(".")) from error
        if not isinstance(value, dict):
            raise malformed(path, f"holds a {type(value).__name__}, expected {what}")
        _CACHE[key] = value
    return _CACHE[key]


def open_h5(path: str):
    """The read-only h5py.File of ``path`` in this process."""
    key = ("h5", os.getpid()) + _file_key(path)
    if key not in _CACHE:
        import h5py  # local: only the K-S / VS100 releases need it

        try:
            _CACHE[key] = h5py.File(path, "r")
        except OSError as error:
            raise malformed(path, f"not a readable HDF5 file ({error})") from error
    return _CACHE[key]


def clear_cache() -> None:
    """Drops every cached feature dict and closes this process's .h5 handles."""
    for key, value in list(_CACHE.items()):
        if key[0] == "h5" and key[1] == os.getpid():
            value.close()
    _CACHE.clear()


# ------------------------------------------------------------------------------------------
# The class and split files.


def read_classes(folder_path: str) -> tuple[str, ...]:
    """Class names indexed by id, from ``category_encode_dict.npy``."""
    path = require(folder_path, CLASS_FILE)
    encode = load_dict(path, "a dict {class name: class id}")
    names = {}
    for name, cid in encode.items():
        if not isinstance(name, str) or not isinstance(cid, (int, np.integer)) or isinstance(
                cid, bool):
            raise malformed(path, f"entry {name!r}: {cid!r} is not class name (str) -> id (int)")
        names.setdefault(int(cid), []).append(name)
    if sorted(names) != list(range(len(encode))) or any(len(v) > 1 for v in names.values()):
        raise malformed(path, f"class ids must be 0..{len(encode) - 1}, each once; got "
                              f"{sorted(int(c) for c in encode.values())}")
    if not names:
        raise malformed(path, "no classes")
    return tuple(names[c][0] for c in range(len(names)))


def read_splits(folder_path: str, class_names: tuple[str, ...]
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (vids object [n], int32 labels [n]) in class-id order, then the file's order
    (the order of ``current_step_data``, dataloader_ours.py l. 69-73)."""
    member_path = require(folder_path, MEMBERSHIP_FILE)
    label_path = require(folder_path, LABEL_FILE)
    membership = load_dict(member_path, "a dict {split: {class id: [vid, ...]}}")
    labels = load_dict(label_path, "a dict {split: {vid: class name}}")
    class_id = {name: c for c, name in enumerate(class_names)}
    splits = {}
    for split in SPLITS:
        members, named = membership.get(split), labels.get(split)
        if not isinstance(members, dict):
            raise malformed(member_path, f"no dict for split {split!r} (keys: "
                                         f"{sorted(map(str, membership))})")
        if not isinstance(named, dict):
            raise malformed(label_path, f"no dict for split {split!r} (keys: "
                                        f"{sorted(map(str, labels))})")
        by_class: dict[int, list] = {}
        for cid, vids in members.items():
            if (not isinstance(cid, (int, np.integer)) or isinstance(cid, bool)
                    or not 0 <= int(cid) < len(class_names)):
                raise malformed(member_path, f"split {split!r}: class key {cid!r} is not a class"
                                             f" id in 0..{len(class_names) - 1}")
            if not isinstance(vids, (list, tuple)) or not all(isinstance(v, str) for v in vids):
                raise malformed(member_path, f"split {split!r}, class {cid}: expected a list of "
                                             f"video ids (str)")
            by_class[int(cid)] = list(vids)
        order, seen = [], set()
        for cid in sorted(by_class):
            for vid in by_class[cid]:
                if vid in seen:
                    raise malformed(member_path, f"split {split!r}: video {vid!r} is listed "
                                                 f"twice")
                seen.add(vid)
                name = named.get(vid)
                if name is None:
                    raise malformed(label_path, f"split {split!r}: video {vid!r} (listed in "
                                                f"{MEMBERSHIP_FILE}) has no class")
                if class_id.get(name) != cid:
                    raise malformed(label_path, f"split {split!r}: video {vid!r} is labelled "
                                                f"{name!r} here but listed under class {cid} "
                                                f"({class_names[cid]!r}) in {MEMBERSHIP_FILE}")
                order.append((vid, cid))
        vids = np.empty(len(order), object)
        vids[:] = [v for v, _ in order]
        splits[split] = (vids, np.array([c for _, c in order], np.int32))
    return splits


# ------------------------------------------------------------------------------------------
# The feature files.


def _check_feature(path: str, vid: str, value, ndim: int, shape: tuple | None, what: str
                   ) -> tuple:
    """The shape of one vid's feature; errors name the vid and the file."""
    value_shape = tuple(getattr(value, "shape", ()))
    dtype = getattr(value, "dtype", None)
    if dtype is None or np.dtype(dtype).kind != "f" or len(value_shape) != ndim:
        raise malformed(path, f"the {what} of video {vid!r} is {type(value).__name__} "
                              f"{value_shape} {dtype}, expected a {ndim}-d float array")
    if shape is not None and value_shape != shape:
        raise malformed(path, f"the {what} of video {vid!r} has shape {value_shape}, but other "
                              f"videos' have {shape}")
    return value_shape


def check_features(path: str, vids, ndim: int, what: str) -> tuple[int, ...]:
    """Every vid of ``vids`` has a float feature of one shape in ``path`` (a dict .npy or an
    .h5 file); returns that shape."""
    store = open_h5(path) if path.endswith(".h5") else load_dict(
        path, f"a dict {{video id: {what}}}")
    shape = None
    for vid in vids:
        if vid not in store:
            raise malformed(path, f"video {vid!r} of the split files has no {what}")
        shape = _check_feature(path, vid, store[vid], ndim, shape, what)
    if shape is None:
        raise malformed(path, "no video of the split files to read a feature size from")
    return shape


def read_feature(path: str, vid: str, shape: tuple, what: str) -> np.ndarray:
    """One vid's feature as float32 ``shape`` (dict .npy or .h5, cached per process)."""
    if path.endswith(".h5"):
        store = open_h5(path)
        if vid not in store:
            raise malformed(path, f"video {vid!r} has no {what}")
        value = store[vid][()]
    else:
        value = load_dict(path, f"a dict {{video id: {what}}}").get(vid)
        if value is None:
            raise malformed(path, f"video {vid!r} has no {what}")
    _check_feature(path, vid, value, len(shape), tuple(shape), what)
    return np.asarray(value, np.float32)
