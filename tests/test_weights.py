"""Pretrained-weight import (jax_cavs.models.weights): the torch-free readers and merge_params,
with numpy and safetensors only (PyTorch, where installed, cross-checks the reading of a legacy
file). The parity of converted models with PyTorch's is tested in test_weights_torch_parity.py.
"""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy_safetensors

from jax_cavs.models import weights
from jax_cavs.models.audio.vggish import VGGish
from jax_cavs.problems.cavs.model import AVSModel
from jax_cavs.models.backbones.resnet import ResNet
from test_weights_torch_parity import torch


# ------------------------------------------------------------------------------------------------
# Reader and merge behaviour (numpy / safetensors only).


def _tiny_avs_model():
    return AVSModel(num_classes=3, backbone_depth=18, backbone_width=0.125, neck_channels=8,
                    neck_dilations=(1, 2), tpavi_stages=(3,), tpavi_inter_channels=4,
                    tpavi_group=5, audio_width=0.125)


def _torch_layout_state_dict(flax_variables, rng):
    """A random torchvision-named state dict whose converted shapes fit ``flax_variables``."""
    state_dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(flax_variables)[0]:
        names = tuple(k.key for k in path)
        shape = leaf.shape
        torch_shape = ((shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else
                       (shape[1], shape[0]) if len(shape) == 2 else shape)
        state_dict[weights.torch_names.flax_path_to_torch_key(names)] = rng.normal(
            size=torch_shape).astype(np.float32)
    return state_dict


def test_load_into_avs_model_places_backbone_and_leaves_the_rest(tmp_path):
    model = _tiny_avs_model()
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 5, 32, 32, 3)), jnp.zeros((1, 5, 96, 64)),
        jnp.ones((1, 5)), train=False))
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map(
        lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    backbone = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
    state_dict = _torch_layout_state_dict(backbone, np.random.default_rng(0))
    state_dict["fc.weight"] = np.zeros((10, 64), np.float32)  # dropped: no classifier
    state_dict["bn1.num_batches_tracked"] = np.zeros((), np.int64)  # dropped
    path = tmp_path / "resnet18.safetensors"
    save_numpy_safetensors(state_dict, str(path))

    loaded = weights.load_torchvision_resnet(variables, path)

    np.testing.assert_array_equal(loaded["params"]["backbone"]["conv1"]["kernel"],
                                  state_dict["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        loaded["params"]["backbone"]["layer2_0"]["downsample_1"]["scale"],
        state_dict["layer2.0.downsample.1.weight"])
    np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["layer4_1"]["bn2"]["var"],
                                  state_dict["layer4.1.bn2.running_var"])
    others = lambda v: {c: {k: t for k, t in v[c].items() if k != "backbone"}
                        for c in ("params", "batch_stats")}
    chex.assert_trees_all_equal(others(loaded), others(variables))


def test_merge_params_reports_missing_unexpected_and_shapes():
    params = {"params": {"a": {"kernel": np.zeros((3, 3, 2, 4), np.float32),
                               "bias": np.zeros(4, np.float32)},
                         "b": {"kernel": np.zeros((4, 5), np.float32)}}}
    loaded = {"params": {"a": {"kernel": np.ones((3, 3, 2, 8), np.float32)},
                         "c": {"kernel": np.ones((4, 5), np.float32)}}}
    with pytest.raises(ValueError) as error:
        weights.merge_params(params, loaded, source="ckpt.pth")
    message = str(error.value)
    assert "ckpt.pth" in message
    assert "missing from the checkpoint (2)" in message
    assert "params/a/bias (torch key a.bias)" in message
    assert "params/b/kernel (torch key b.weight)" in message
    assert "unexpected (not in the model) (1)" in message and "params/c/kernel" in message
    assert "params/a/kernel (torch key a.weight): expected [3, 3, 2, 4], got [3, 3, 2, 8]" \
        in message


def test_merge_params_dont_load_keeps_init_and_casts_dtype():
    params = {"params": {"a": {"kernel": np.zeros((2, 2), np.float32),
                               "bias": np.full(2, 7.0, np.float32)},
                         "head": {"kernel": np.full((2, 3), 5.0, np.float32)}}}
    loaded = {"params": {"a": {"kernel": np.arange(4, dtype=np.float16).reshape(2, 2),
                               "bias": np.ones(2, np.float64)},
                         "head": {"kernel": np.ones((9, 9), np.float32)},  # skipped
                         "extra": {"bias": np.ones(1, np.float32)}}}  # skipped
    merged = weights.merge_params(params, loaded, dont_load=(r"params/head/.*", r".*/extra/.*"))
    np.testing.assert_array_equal(merged["params"]["a"]["kernel"], [[0, 1], [2, 3]])
    assert merged["params"]["a"]["kernel"].dtype == np.float32
    assert merged["params"]["a"]["bias"].dtype == np.float32
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], np.full((2, 3), 5.0))
    assert "extra" not in merged["params"]


def test_wrong_file_lists_the_mismatching_keys(tmp_path):
    """A VGGish file given as the ResNet weights: every ResNet leaf is missing, every VGGish
    leaf unexpected."""
    vggish = VGGish(width=0.125)
    vggish_vars = jax.eval_shape(lambda: vggish.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 64))))
    path = tmp_path / "vggish.safetensors"
    save_numpy_safetensors(_torch_layout_state_dict(vggish_vars, np.random.default_rng(0)),
                           str(path))
    resnet = ResNet(depth=18, width=0.125)
    resnet_vars = jax.eval_shape(lambda: resnet.init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 32, 32, 3)), train=False))
    with pytest.raises(ValueError) as error:
        weights.load_torchvision_resnet(resnet_vars, path, prefix=())
    message = str(error.value)
    assert str(path) in message
    assert "params/conv1/kernel (torch key conv1.weight)" in message
    assert "params/features_0/kernel (torch key features.0.weight)" in message


def test_missing_weight_file_names_the_path(tmp_path):
    path = tmp_path / "resnet50-19c8e357.pth"
    with pytest.raises(FileNotFoundError, match="resnet50-19c8e357.pth"):
        weights.read_state_dict(path)


def test_reader_refuses_foreign_pickled_objects(tmp_path):
    """A zip checkpoint whose pickle references anything but state-dict classes is refused
    before the object is built (no code from the file runs)."""
    import pickle
    import zipfile
    path = tmp_path / "module.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(collections.Counter(a=1), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"module\.pth.*collections\.Counter"):
        weights.read_state_dict(path)


def test_reader_rejects_a_non_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        weights.read_state_dict(path)


def test_reader_handles_torch_0_3_legacy_files(tmp_path, monkeypatch):
    """The official resnet50-19c8e357.pth predates torch 0.4: legacy format, tensors pickled as
    ``torch._utils._rebuild_tensor(storage, offset, size, stride)``, storages possibly views.
    This writes such a file byte for byte without torch: a protocol-2 pickle whose globals are
    renamed to the torch names afterwards (GLOBAL opcodes are newline-terminated text)."""
    import io
    import pickle
    import struct
    import sys
    import types

    utils = types.ModuleType("_fake_torch_utils")
    storages = types.ModuleType("_fake_torch")

    def _rebuild_tensor(*args):
        raise AssertionError("only pickled, never called")

    class FloatStorage:
        pass

    _rebuild_tensor.__module__, _rebuild_tensor.__qualname__ = utils.__name__, "_rebuild_tensor"
    FloatStorage.__module__, FloatStorage.__qualname__ = storages.__name__, "FloatStorage"
    utils._rebuild_tensor, storages.FloatStorage = _rebuild_tensor, FloatStorage
    monkeypatch.setitem(sys.modules, utils.__name__, utils)
    monkeypatch.setitem(sys.modules, storages.__name__, storages)

    class Storage:
        def __init__(self, key, numel, view=None):
            self.key, self.numel, self.view = key, numel, view

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride)

        def __reduce__(self):
            return _rebuild_tensor, self.args

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cuda:0", obj.numel, obj.view)
            return None

    root = np.arange(20, dtype=np.float32) * 0.5
    state = collections.OrderedDict([
        # a [3, 2] tensor stored transposed (stride (1, 3)) at offset 2 of storage "root"
        ("fc.weight", Tensor(Storage("root", 20), 2, (3, 2), (1, 3))),
        # a view storage: elements 12..17 of "root", seen through view key "v"
        ("fc.bias", Tensor(Storage("root", 20, ("v", 12, 6)), 1, (4,), (1,))),
    ])
    buffer = io.BytesIO()
    LegacyPickler(buffer, protocol=2).dump(state)
    body = buffer.getvalue()
    for fake, real in ((b"c_fake_torch_utils\n", b"ctorch._utils\n"),
                       (b"c_fake_torch\n", b"ctorch\n")):
        assert fake in body
        body = body.replace(fake, real)
    path = tmp_path / "old.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(header, f, protocol=2)
        f.write(body)
        pickle.dump(["root"], f, protocol=2)
        f.write(struct.pack("<q", root.size) + root.tobytes())

    state_dict = weights.read_state_dict(path)
    if torch is not None:  # torch itself reads the hand-written file the same way
        reference = torch.load(str(path), map_location="cpu", weights_only=False)
        for key, value in reference.items():
            np.testing.assert_array_equal(state_dict[key], value.numpy())
    np.testing.assert_array_equal(state_dict["fc.weight"],
                                  [[root[2], root[5]], [root[3], root[6]], [root[4], root[7]]])
    np.testing.assert_array_equal(state_dict["fc.bias"], root[13:17])
