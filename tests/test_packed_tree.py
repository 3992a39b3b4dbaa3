"""core.packed_tree: small leaves packed per dtype, large ones kept, and the exact pytree back
(through orbax in test_bad_input.py / test_optim.py / test_resume.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import packed_tree
from jax_cavs.core.state import create_state


def tree():
    params = {"conv": {"kernel": jnp.arange(24.0).reshape(2, 3, 4), "bias": jnp.ones(4)},
              "head": [jnp.full((3,), 2.0, jnp.bfloat16), jnp.arange(5, dtype=jnp.int32)]}
    return {"params": params, "opt": optax.adam(1e-3).init(params), "flag": np.bool_(True),
            "count": 3}


def test_small_leaves_share_one_array_per_dtype_and_large_ones_stay(monkeypatch):
    monkeypatch.setattr(packed_tree, "SMALL_BYTES", 16)  # 4 floats are small, 5 ints large
    item, entries = packed_tree.pack(tree())
    by_path = {tuple(e["path"]): e for e in entries}
    assert by_path[("params", "conv", "kernel")]["where"] == "arrays"
    bias = by_path[("params", "conv", "bias")]
    assert bias["where"] == "packed" and bias["shape"] == [4] and bias["dtype"] == "float32"
    assert sorted(item["packed"]) == ["bfloat16", "bool", "float32", "int32", "int64"]
    # float32 small leaves: the bias and Adam's mu / nu of it, back to back in flattening
    # order (Adam's count is the packed int32).
    flat = item["packed"]["float32"]
    np.testing.assert_array_equal(flat[bias["offset"]:bias["offset"] + 4], np.ones(4))
    assert flat.size == sum(int(np.prod(e["shape"])) for e in entries
                            if e["where"] == "packed" and e["dtype"] == "float32")
    # The kernel (96 bytes) and the int32 head leaf (20), each with Adam's two moments.
    assert len(item["arrays"]) == 6


@pytest.mark.parametrize("small_bytes", [16, 1 << 20])
def test_unpack_rebuilds_the_exact_tree(monkeypatch, small_bytes):
    monkeypatch.setattr(packed_tree, "SMALL_BYTES", small_bytes)
    original = tree()
    item, entries = packed_tree.pack(original)
    template = jax.tree_util.tree_map(  # Python scalars stay what they are
        lambda x: jnp.zeros_like(x) if hasattr(x, "dtype") else x, original)
    back = packed_tree.unpack(item, entries, template)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(original)
    chex.assert_trees_all_equal(back, original)
    assert packed_tree.mismatch(entries, template) == ""
    raw = packed_tree.unpack_raw(item, entries)
    np.testing.assert_array_equal(raw["params"]["head"][1], np.arange(5))
    np.testing.assert_array_equal(raw["opt"][0]["mu"]["conv"]["bias"], np.zeros(4))


def test_mismatch_names_the_differing_leaves():
    _, entries = packed_tree.pack(tree())
    other = tree()
    other["params"]["conv"]["bias"] = jnp.ones(5)
    del other["flag"]
    message = packed_tree.mismatch(entries, other)
    assert "['params']['conv']['bias']: saved float32(4,), expected float32(5,)" in message
    assert "['flag']: saved bool(), expected absent" in message


def test_a_checkpoint_of_another_state_is_refused_by_name(tmp_path):
    def state(width):
        params = {"dense": {"kernel": jnp.ones((2, width)), "bias": jnp.ones(width)}}
        return create_state({"params": params}, optax.adam(1e-3), num_classes=4,
                            memory_capacity=2, use_importance=False, extras={})

    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    checkpointer.save(1, state(3), {"task": 0}, {})
    with pytest.raises(ckpt_lib.CorruptCheckpoint,
                       match=r"\['old_params'\]\['dense'\]\['bias'\]: saved float32\(3,\), "
                             r"expected float32\(5,\)"):
        checkpointer.restore(state(5))
    raw = checkpointer.restore_raw()
    np.testing.assert_array_equal(raw["state"]["params"]["dense"]["kernel"], np.ones((2, 3)))
    checkpointer.close()


def test_a_checkpoint_written_before_packing_still_resumes(tmp_path):
    """Checkpoints of older runs hold ``state`` leaf by leaf and no ``layout``: restored as they
    were written (a run started with an older jax_cavs resumes)."""
    import orbax.checkpoint as ocp

    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    state = create_state({"params": params}, optax.adam(1e-3), num_classes=4, memory_capacity=2,
                         use_importance=False, extras={})
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"), options=ocp.
                                    CheckpointManagerOptions(enable_async_checkpointing=False))
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave({"task": 1}),
                                            data=ocp.args.JsonSave({})))
    manager.wait_until_finished()
    manager.close()
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    restored, meta, data, aux = checkpointer.restore(state)
    chex.assert_trees_all_equal(restored.params, state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
    assert (meta, data, aux) == ({"task": 1}, {}, {})
    raw = checkpointer.restore_raw()
    np.testing.assert_array_equal(raw["state"]["params"]["dense"]["bias"], np.ones(3))
    checkpointer.close()
