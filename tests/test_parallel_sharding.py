"""Sharding rules of jax_cavs/parallel.py that need no simulated devices: FSDP partition specs,
the layout of the continual state, the mesh, batch placement and the rounding of batch sizes up
to the device count. Helpers come from test_parallel.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from jax_cavs.core import parallel
from jax_cavs.core.optim import build_optimizer
from jax_cavs.problems.cavs.model import build_model
from jax_cavs.core.state import create_state
from test_parallel import NUM_CLASSES, SIZE, T, model_config, runlocal_config


# -- sharding rules (no devices needed) ----------------------------------------------------------

@pytest.mark.parametrize("shape, fsdp, min_size, expected", [
    ((3, 3, 64, 128), 4, 1, P(None, None, None, "fsdp")),  # largest axis divisible by 4
    ((4096, 6), 4, 1, P("fsdp")),
    ((6, 10), 4, 1, P()),                                   # no axis divisible by 4
    ((7, 12), 4, 1, P(None, "fsdp")),                       # the divisible one, not the first
    ((3, 3, 64, 128), 4, 2 ** 17, P()),                     # 73728 elements: too small
    ((3, 3, 64, 128), 1, 1, P()),                           # no fsdp axis
    ((), 4, 0, P()),                                        # scalars
])
def test_fsdp_spec(shape, fsdp, min_size, expected):
    assert parallel.fsdp_spec(shape, fsdp, min_size) == expected


def test_teacher_anchor_importance_and_moments_follow_params():
    """With fsdp = 4 every tree with the params' structure gets the params' layout, leaf for
    leaf; scalars, class masks and the replay memory stay replicated."""
    cfg = runlocal_config()
    model = build_model(model_config(cfg.model, NUM_CLASSES))
    dummy = (jnp.zeros((1, T, SIZE, SIZE, 3)), jnp.zeros((1, T, 96, 64)), jnp.ones((1, T)))
    state = jax.eval_shape(lambda: create_state(
        model.init(jax.random.key(0), *dummy, train=False), build_optimizer(cfg.optimizer),
        NUM_CLASSES, 16, True, {}))
    mesh = AbstractMesh((2, 4), parallel.BATCH_AXES)
    specs = jax.tree_util.tree_map(lambda s: s.spec, parallel.state_sharding(state, mesh))
    params = specs.params
    assert any(s != P() for s in jax.tree_util.tree_leaves(params)), "nothing FSDP-split"
    adam = specs.opt_state.inner_state[-1][0]  # chain(clip, adam): ScaleByAdamState
    for tree in (specs.old_params, specs.anchor, specs.importance, specs.path_integral,
                 adam.mu, adam.nu):
        assert tree == params
    replicated = [specs.step, specs.task, specs.seen, specs.old, specs.current,
                  *jax.tree_util.tree_leaves(specs.memory)]
    assert all(s == P() for s in replicated)


def test_make_mesh_rejects_layouts_that_do_not_cover_the_devices():
    n = jax.device_count()
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
    assert dict(mesh.shape) == {"data": n, "fsdp": 1}
    with pytest.raises(ValueError, match="parallel.data"):
        parallel.make_mesh(ml_collections.ConfigDict(dict(data=n + 1, fsdp=1)))
    with pytest.raises(ValueError, match="parallel.fsdp"):
        parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=n + 1)))


def test_shard_batch_places_whole_and_per_process_batches():
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
    clips = jax.device_count() * 2
    batch = {"x": np.arange(clips * 3, dtype=np.float32).reshape(clips, 3)}
    for whole in (False, True):  # one process: its slice is the whole batch
        placed = parallel.shard_batch(batch, mesh, whole=whole)
        np.testing.assert_array_equal(parallel.to_host(placed)["x"], batch["x"])
        assert placed["x"].sharding == parallel.batch_sharding(mesh)
    if jax.device_count() > 1:
        with pytest.raises(ValueError, match="batch_size"):
            parallel.shard_batch({"x": np.zeros((jax.device_count() + 1, 3))}, mesh)


# -- batch sizes and the device count ------------------------------------------------------------

def test_batches_round_up_to_the_device_count_for_runlocal(capsys):
    """``train.batch_to_devices`` (runlocal's setting): runlocal's batch of 2 becomes 8 on 8
    devices, its eval batch of 8 stays; config.json's sizes are the caller's (a copy)."""
    from jax_cavs.problems.cavs import config as config_base

    config = config_base.base_config("finetune", config_base.parse_arg("runlocal"))
    assert config.train.batch_to_devices and config.train.batch_size == 2
    rounded = parallel.batches_to_devices(config, 8)
    assert (rounded.train.batch_size, rounded.train.eval_batch_size) == (8, 8)
    assert parallel.batches_to_devices(config, 3).train.eval_batch_size == 9
    assert config.train.batch_size == 2
    assert "train.batch_size 2 -> 8" in capsys.readouterr().err
    assert not config_base.base_config("finetune", config_base.parse_arg(None)
                                       ).train.batch_to_devices
