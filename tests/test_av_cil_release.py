"""The reader of AV-CIL's released feature layout (``problems/av_cil/release.py``).

The fixtures are written here with ``np.save(..., allow_pickle=True)`` and h5py directly, not
by the project's writer, mirroring the structure of the authors' real files (read from their
repository, data/<ds>/*.npy): a 0-d object array holding a dict; category_encode_dict
{name: int id}; all_classId_vid_dict {split: {int class id: [str vid]}} with the class keys in
no particular order (AVE's train dict starts 17, 9, 13, ...); all_id_category_dict {split:
{str vid: name}}; audio {vid: float32 [D_a]}; AVE's visual {vid: float32 [N, D_v]}; K-S /
VS100's visual_features.h5 with one dataset per vid. The real files were written by numpy 1.x,
whose pickles name ``numpy.core.multiarray``; numpy 2 writes ``numpy._core.multiarray``: both
are read.
"""

import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

from jax_cavs.data import safe_pickle
from jax_cavs.problems.av_cil import release_files
from jax_cavs.problems.av_cil.release import DATASETS, FeatureSource, open_release

CLASSES = ["Acoustic guitar", "Cat", "Fixed-wing aircraft, airplane", "Frying (food)"]
MEMBERS = {  # class keys out of order, as in the real files
    "train": {2: ["c---zaDCTaE", "fCZi6I6kPpU"], 0: ["0I_WwkebbeM", "-ccciEuH9FE", "a1"],
              3: ["EV1bVf8Bldk"], 1: ["b1", "b2"]},
    "val": {1: ["PIdEa_F_VYg"], 0: ["dODwkYHQF9E"], 3: ["v3"], 2: ["v2"]},
    "test": {3: ["t3a", "t3b"], 0: ["EsfJpLbBeb4"], 1: ["hOuyJFqb4JM"], 2: ["t2"]},
}
TOKENS, DV, DA = 6, 5, 7


def _numpy1_npy(path, obj):
    """Writes ``obj`` as numpy 1.x's np.save did: protocol 3, numpy.core.multiarray."""
    array = np.empty((), object)
    array[()] = obj
    data = pickle.dumps(array, protocol=3).replace(b"cnumpy._core.multiarray\n",
                                                    b"cnumpy.core.multiarray\n")
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(data)


def write_release(root, folder="AVE", h5=False, numpy1=False, extra_vids=("unused",)):
    """A release tree DIR/<folder>/...; returns (DIR, audio dict, visual dict)."""
    rng = np.random.default_rng(0)
    ds = os.path.join(root, folder)
    for sub in ("audio_pretrained_feature", "visual_pretrained_feature"):
        os.makedirs(os.path.join(ds, sub), exist_ok=True)
    labels = {s: {v: CLASSES[c] for c, vids in reversed(list(m.items())) for v in vids}
              for s, m in MEMBERS.items()}
    vids = [v for m in MEMBERS.values() for vs in m.values() for v in vs] + list(extra_vids)
    audio = {v: rng.standard_normal(DA).astype(np.float32) for v in vids}
    visual = {v: rng.standard_normal((TOKENS, DV)).astype(np.float32) for v in vids}
    save = _numpy1_npy if numpy1 else (lambda p, o: np.save(p, o, allow_pickle=True))
    save(os.path.join(ds, "category_encode_dict.npy"), {n: i for i, n in enumerate(CLASSES)})
    save(os.path.join(ds, "all_classId_vid_dict.npy"), MEMBERS)
    save(os.path.join(ds, "all_id_category_dict.npy"), labels)
    save(os.path.join(ds, "audio_pretrained_feature", "audio_pretrained_feature_dict.npy"),
         audio)
    if h5:
        with h5py.File(os.path.join(ds, "visual_pretrained_feature", "visual_features.h5"),
                       "w") as f:
            for v, x in visual.items():
                f.create_dataset(v, data=x)
    else:
        save(os.path.join(ds, "visual_pretrained_feature",
                          "visual_pretrained_feature_dict.npy"), visual)
    return str(root), audio, visual


@pytest.fixture(autouse=True)
def _fresh_cache():
    release_files.clear_cache()
    yield
    release_files.clear_cache()


def expected_order(split):
    return [(v, c) for c in sorted(MEMBERS[split]) for v in MEMBERS[split][c]]


@pytest.mark.parametrize("dataset,folder,h5,numpy1", [
    ("ave", "AVE", False, True), ("ave", "AVE", False, False), ("ave", "AVE", True, False),
    ("ks", "kinetics-sounds", True, True), ("vs100", "VGGSound_100", True, False)])
def test_release_is_read_exactly(tmp_path, dataset, folder, h5, numpy1):
    data_dir, audio, visual = write_release(tmp_path, folder, h5=h5, numpy1=numpy1)
    release = open_release(data_dir, dataset)
    assert DATASETS[dataset] == folder == release.name
    assert release.root == os.path.join(data_dir, folder)
    assert release.class_names == tuple(CLASSES)
    assert (release.audio_dim, release.visual_shape) == (DA, (TOKENS, DV))
    assert release.visual_file.endswith(".h5" if h5 else "visual_pretrained_feature_dict.npy")
    for split in ("train", "val", "test"):
        vids, labels = release.splits[split]
        order = expected_order(split)
        assert list(vids) == [v for v, _ in order]
        assert labels.dtype == np.int32 and labels.tolist() == [c for _, c in order]
        source = FeatureSource(release, split)
        assert len(source) == len(order)
        for i, (vid, cid) in enumerate(order):
            clip = source[i]
            assert set(clip) == {"audio", "visual", "label", "index"}
            assert clip["audio"].dtype == clip["visual"].dtype == np.float32
            np.testing.assert_array_equal(clip["audio"], audio[vid])
            np.testing.assert_array_equal(clip["visual"], visual[vid])
            assert clip["label"].dtype == np.int32 and int(clip["label"]) == cid
            assert clip["index"].dtype == np.int64 and int(clip["index"]) == i


def test_real_split_file_structure_is_read(tmp_path):
    """Pickles exactly like the authors' split files (numpy 1.x, protocol 3) pass the
    restricted unpickler and come back as plain dicts with int keys and str values."""
    path = tmp_path / "all_classId_vid_dict.npy"
    _numpy1_npy(path, MEMBERS)
    assert b"cnumpy.core.multiarray\n_reconstruct" in path.read_bytes()
    loaded = safe_pickle.load_npy_object(path)
    assert loaded == MEMBERS and list(loaded["train"]) == [2, 0, 3, 1]


class _Payload:
    """Stands for any class a tampered pickle could instantiate."""


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("make,global_name", [
    (lambda marker: {"a": _Payload()}, "_Payload"),
    (lambda marker: {"a": _RunsCode(marker)}, "system"),
    (lambda marker: {"a": __import__("collections").OrderedDict(b=1)}, "OrderedDict")])
def test_foreign_pickles_are_refused_naming_the_file(tmp_path, make, global_name):
    data_dir, _, _ = write_release(tmp_path)
    marker = tmp_path / "code_ran"
    path = os.path.join(data_dir, "AVE", "audio_pretrained_feature",
                        "audio_pretrained_feature_dict.npy")
    np.save(path, make(marker), allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError) as error:
        open_release(data_dir, "ave")
    message = str(error.value)
    assert path in message and global_name in message and "\n" not in message
    assert not marker.exists()


def _drop(path):
    os.remove(path)


@pytest.mark.parametrize("relative,change,error_type,needles", [
    ("audio_pretrained_feature/audio_pretrained_feature_dict.npy", _drop, FileNotFoundError,
     ["audio_pretrained_feature_dict.npy", "wiberg/AV-CIL_features", "AVE_features.zip"]),
    ("visual_pretrained_feature/visual_pretrained_feature_dict.npy", _drop, FileNotFoundError,
     ["visual_pretrained_feature_dict.npy", "wiberg/AV-CIL_features"]),
    ("category_encode_dict.npy", _drop, FileNotFoundError,
     ["category_encode_dict.npy", "weiguoPian/AV-CIL_ICCV2023"]),
    ("category_encode_dict.npy", lambda p: np.save(p, ["Cat", "Bus"]), ValueError,
     ["category_encode_dict.npy", "plain <U3 array"]),
    ("category_encode_dict.npy", lambda p: np.save(p, np.array([{"Cat": 0}], object),
                                                   allow_pickle=True),
     ValueError, ["category_encode_dict.npy", "holds a ndarray, expected a dict"]),
    ("category_encode_dict.npy", lambda p: open(p, "wb").write(b"junk"), ValueError,
     ["category_encode_dict.npy", "not a readable .npy"]),
    ("category_encode_dict.npy", lambda p: np.save(p, {"Cat": 0, "Bus": 2}, allow_pickle=True),
     ValueError, ["category_encode_dict.npy", "0..1"]),
    ("all_classId_vid_dict.npy",
     lambda p: np.save(p, {"train": MEMBERS["train"]}, allow_pickle=True), ValueError,
     ["all_classId_vid_dict.npy", "'val'"]),
    ("all_id_category_dict.npy", lambda p: np.save(
        p, {s: {v: "Cat" for c in m.values() for v in c} for s, m in MEMBERS.items()},
        allow_pickle=True), ValueError, ["all_id_category_dict.npy", "0I_WwkebbeM", "'Cat'"]),
    ("audio_pretrained_feature/audio_pretrained_feature_dict.npy",
     lambda p: np.save(p, {"b1": np.zeros(DA, np.float32)}, allow_pickle=True), ValueError,
     ["audio_pretrained_feature_dict.npy", "0I_WwkebbeM", "no audio feature"]),
    ("audio_pretrained_feature/audio_pretrained_feature_dict.npy", lambda p: np.save(
        p, {**safe_pickle.load_npy_object(p), "b2": np.zeros(DA + 1, np.float32)},
        allow_pickle=True), ValueError, ["audio_pretrained_feature_dict.npy", "'b2'", "(8,)"]),
])
def test_bad_files_give_one_line_errors_naming_them(tmp_path, relative, change, error_type,
                                                    needles):
    data_dir, _, _ = write_release(tmp_path)
    change(os.path.join(data_dir, "AVE", relative))  # our own fixture: trusted
    with pytest.raises(error_type) as error:
        open_release(data_dir, "ave")
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_h5_missing_vid_and_bad_shape_are_named(tmp_path):
    data_dir, _, _ = write_release(tmp_path, "kinetics-sounds", h5=True)
    path = os.path.join(data_dir, "kinetics-sounds", "visual_pretrained_feature",
                        "visual_features.h5")
    with h5py.File(path, "a") as f:
        del f["t2"]
        f.create_dataset("t2", data=np.zeros((TOKENS + 1, DV), np.float32))
    with pytest.raises(ValueError, match=r"visual_features\.h5.*'t2'.*\(7, 5\)"):
        open_release(data_dir, "ks")
    release_files.clear_cache()
    with h5py.File(path, "a") as f:
        del f["t2"]
    with pytest.raises(ValueError, match=r"visual_features\.h5.*'t2'.*no visual feature"):
        open_release(data_dir, "ks")


def test_missing_dataset_folder_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VGGSound_100.*data_dir"):
        open_release(str(tmp_path), "vs100")
    with pytest.raises(ValueError, match="unknown AV-CIL dataset 'avs'"):
        open_release(str(tmp_path), "avs")


@pytest.mark.parametrize("h5", [False, True])
def test_feature_source_pickles_into_a_fresh_process(tmp_path, h5):
    """grain's worker processes get the source pickled; each reads the files itself."""
    folder = "kinetics-sounds" if h5 else "AVE"
    data_dir, audio, visual = write_release(tmp_path, folder, h5=h5)
    source = FeatureSource(open_release(data_dir, folder), "test")
    source[0]  # opens the .h5 / loads the dicts here first: handles must not travel
    blob = tmp_path / "source.pkl"
    blob.write_bytes(pickle.dumps(source))
    out = tmp_path / "out.npz"
    script = ("import pickle, sys, numpy as np; s = pickle.load(open(sys.argv[1], 'rb')); "
              "c = [s[i] for i in range(len(s))]; np.savez(sys.argv[2], "
              "a=np.stack([x['audio'] for x in c]), v=np.stack([x['visual'] for x in c]), "
              "y=np.array([x['label'] for x in c]))")
    subprocess.run([sys.executable, "-c", script, str(blob), str(out)], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    got = np.load(out)
    order = expected_order("test")
    np.testing.assert_array_equal(got["a"], np.stack([audio[v] for v, _ in order]))
    np.testing.assert_array_equal(got["v"], np.stack([visual[v] for v, _ in order]))
    assert got["y"].tolist() == [c for _, c in order]


def test_torch_legacy_header_pickles_run_no_code(tmp_path):
    """The same hardening for the legacy torch.save reader: its header pickles (magic number,
    protocol, system info) used to be read with plain pickle.load."""
    from jax_cavs.models.torch_state_dict import read_state_dict

    marker = tmp_path / "code_ran"
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(ValueError, match=r"legacy\.pth.*posix\.system|legacy\.pth.*os\.system"):
        read_state_dict(path)
    assert not marker.exists()
