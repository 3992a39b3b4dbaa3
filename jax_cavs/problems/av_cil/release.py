"""The reader of AV-CIL's released pre-extracted features (AVE, Kinetics-Sounds, VGGSound100)
and of the embedded ``synth_av_ci``, which is written in the same layout.

    release = open_release(DIR, "ave")        # DIR = the authors' data/ folder
    source = FeatureSource(release, "train")  # grain random-access source
    source[0] -> {"audio": float32 [768], "visual": float32 [1568, 768], "label": int32,
                  "index": int64}

``open_release`` reads the class order and the frozen split files, checks that every clip of
every split has an audio and a visual feature of one shape (so a bad download fails at once,
naming the file, the clip and the fix, not in the middle of a run), and reads the feature
sizes from the files: the papers' 768 and (1568, 768), or anything a smaller tree in the same
layout holds. The layout, the files' structure and how the authors use each one are in
``release_files`` (ours/dataloader_ours.py l. 18-101). Labels are the class ids of
``category_encode_dict.npy`` (that order is the paper's fixed class split; task t holds ids
[t k, (t + 1) k), spec_family §A2); a split's clips are ordered by class id, then as listed in
``all_classId_vid_dict.npy``, the order in which the authors' loader concatenates a step's
classes (l. 69-73).

Memory: the authors load AVE's visual dict whole (ours/dataloader_ours.py l. 21: 4,143 clips
x 1568 x 768 float32, about 20 GB); so does this reader, once per process (``release_files``
caches it), and every grain worker process holds its own copy, so run AVE with
``worker_count=0`` or convert the dict to ``visual_features.h5`` (one dataset per vid), which is
read lazily. K-S and VS100's .h5 files are opened lazily, once per process.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jax_cavs.problems.av_cil import release_files as files
from jax_cavs.problems.av_cil.release_files import SPLITS

# config name -> folder under DIR (the authors' folder names, ours/dataloader_ours.py l. 19-26).
DATASETS = {"ave": "AVE", "ks": "kinetics-sounds", "vs100": "VGGSound_100",
            "synth_av_ci": "synth_av_ci"}


@dataclasses.dataclass(frozen=True, eq=False)
class Release:
    """One dataset of the released layout, checked by ``open_release``.

    Attributes:
        root: the dataset's folder, DIR/<name>.
        name: the folder's name under DIR ('AVE', 'kinetics-sounds', 'VGGSound_100',
            'synth_av_ci').
        class_names: index = class id (the order of ``category_encode_dict.npy``).
        splits: 'train' / 'val' / 'test' -> (video ids, object [n]; labels, int32 [n]), sorted
            by class id, then in the split file's order.
        audio_dim: D_a of the audio vectors (768 in the papers).
        visual_shape: (tokens, D_v) of the visual features ((1568, 768) in the papers: 8
            temporal x 196 spatial tokens, token order (t, h, w)).
        audio_file, visual_file: the feature files read (a dict .npy or an .h5 file).
    """

    root: str
    name: str
    class_names: tuple[str, ...]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    audio_dim: int
    visual_shape: tuple[int, int]
    audio_file: str = ""
    visual_file: str = ""

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(v[0])}" for s, v in self.splits.items())
        return (f"Release({self.root!r}, {len(self.class_names)} classes, {sizes}, audio "
                f"[{self.audio_dim}], visual {list(self.visual_shape)})")


def _folder(dataset: str) -> str:
    if dataset in DATASETS:
        return DATASETS[dataset]
    if dataset in DATASETS.values():
        return dataset
    raise ValueError(f"unknown AV-CIL dataset {dataset!r}: expected one of {sorted(DATASETS)} "
                     f"(or their folders {sorted(DATASETS.values())}).")


def _visual_file(root: str, folder: str) -> str:
    """The native visual file of ``folder``, or the other form when only it is present."""
    native = files.NATIVE_VISUAL.get(folder, files.VISUAL_DICT_FILE)
    other = files.VISUAL_H5_FILE if native == files.VISUAL_DICT_FILE else files.VISUAL_DICT_FILE
    if not os.path.isfile(os.path.join(root, native)) and os.path.isfile(
            os.path.join(root, other)):
        return os.path.join(root, other)
    return files.require(root, native)


def open_release(data_dir: str, dataset: str) -> Release:
    """Reads and checks one dataset of the released layout.

    Args:
        data_dir: DIR, the folder holding the dataset folders (the authors' ``data/``; for the
            embedded data, what ``synth.ensure_synth_av_ci`` returns).
        dataset: a key of ``DATASETS`` ('ave', 'ks', 'vs100', 'synth_av_ci') or its folder.

    Raises:
        FileNotFoundError: a file is missing (the message names it and where to get it).
        ValueError: a file is malformed, a clip of a split has no feature, or feature shapes
            differ (the message names the file and the clip).
        pickle.UnpicklingError: a .npy pickle names a global other than numpy's array
            reconstructors (the message names the file and the global).
    """
    folder = _folder(dataset)
    data_dir = os.path.expanduser(os.fspath(data_dir))
    root = os.path.join(data_dir, folder)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"AV-CIL dataset folder {root} does not exist: set --config.dataset.data_dir to the "
            f"folder holding {folder}/ (the authors' data/ folder; "
            f"{files.fix_for(folder, files.CLASS_FILE)}; and for the features, "
            f"{files.fix_for(folder, files.AUDIO_FILE)}).")
    class_names = files.read_classes(root)
    splits = files.read_splits(root, class_names)
    audio_file = files.require(root, files.AUDIO_FILE)
    visual_file = _visual_file(root, folder)
    vids = [vid for split in SPLITS for vid in splits[split][0]]
    (audio_dim,) = files.check_features(audio_file, vids, 1, "audio feature")
    visual_shape = files.check_features(visual_file, vids, 2, "visual feature")
    return Release(root=root, name=folder, class_names=class_names, splits=splits,
                   audio_dim=int(audio_dim), visual_shape=tuple(int(s) for s in visual_shape),
                   audio_file=audio_file, visual_file=visual_file)


class FeatureSource:
    """Random access over one split of a ``Release`` (a grain ``RandomAccessDataSource``).

    Record i is the split's i-th clip (``release.splits[split]`` order). Picklable: a worker
    process reads the feature files itself, once (dicts) or lazily (.h5), on first access.
    """

    def __init__(self, release: Release, split: str):
        if split not in release.splits:
            raise ValueError(f"FeatureSource: unknown split {split!r}; the release has "
                             f"{sorted(release.splits)}.")
        if not release.audio_file or not release.visual_file:
            raise ValueError("FeatureSource: the Release names no feature files; build it "
                             "with open_release.")
        self.release, self.split = release, split
        self.vids, self.labels = release.splits[split]

    def __len__(self) -> int:
        return len(self.vids)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < len(self.vids):
            raise IndexError(f"FeatureSource({self.release.name}, {self.split}): record {i} of "
                             f"{len(self.vids)}.")
        vid, release = self.vids[i], self.release
        return {
            "audio": files.read_feature(release.audio_file, vid, (release.audio_dim,),
                                        "audio feature"),
            "visual": files.read_feature(release.visual_file, vid, release.visual_shape,
                                         "visual feature"),
            "label": np.int32(self.labels[i]),
            "index": np.int64(i),
        }

    def __repr__(self) -> str:
        return f"FeatureSource({self.release.root!r}, {self.split!r}, {len(self)} clips)"
