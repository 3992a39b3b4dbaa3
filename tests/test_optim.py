"""The optimiser (core.optim) and parameter roles (core.roles): frozen leaves carry no
optimiser state and never move; roles name leaves by regex."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jax_cavs.core import optim, roles
from jax_cavs.core.checkpoint import Checkpointer
from jax_cavs.core.state import create_state
from jax_cavs.problems.cavs import config as cavs_config
from jax_cavs.problems.cavs import model as model_lib
from jax_cavs.problems.cavs.problem import CAVSProblem

PARAMS = {"audio_encoder": {"conv": {"kernel": jnp.full((2, 3), 0.5)}},
          "decoder": {"head": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}}}


def _cfg(name="adamw", weight_decay=0.1, grad_clip=0.0):
    return ml_collections.ConfigDict(dict(name=name, lr=1e-2, weight_decay=weight_decay,
                                          grad_clip=grad_clip))


def _size(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def test_roles_mask_include_exclude_and_replace():
    mask = roles.leaf_mask(PARAMS, include=(r"^decoder/",), exclude=(r"/bias$",))
    assert mask == {"audio_encoder": {"conv": {"kernel": False}},
                    "decoder": {"head": {"kernel": True, "bias": False}}}
    assert roles.leaf_mask(PARAMS) == jax.tree_util.tree_map(lambda _: True, PARAMS)
    found = roles.matching(PARAMS, (r"^decoder/head/",))
    assert sorted(found) == ["decoder/head/bias", "decoder/head/kernel"]
    new = roles.replace_leaves(PARAMS, {"decoder/head/bias": jnp.zeros(2)})
    np.testing.assert_array_equal(new["decoder"]["head"]["bias"], [0, 0])
    assert new["decoder"]["head"]["kernel"] is PARAMS["decoder"]["head"]["kernel"]
    with pytest.raises(ValueError, match="role.*'adapter'.*declared roles"):
        roles.role_regexes({"norm": ()}, ["adapter"], "strategy.include_roles")
    with pytest.raises(ValueError, match="strategy.exclude.*not a valid regular"):
        roles.compile_regexes(["(unclosed"], "strategy.exclude")


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_frozen_leaves_have_no_state_and_never_move(name):
    tx = optim.build_optimizer(_cfg(name), frozen=(r"^audio_encoder/",))
    state = optim.fresh_state(tx, PARAMS, 0.05)
    # Moments (adam: mu and nu; sgd: one trace) for the decoder's 8 numbers only.
    moments = {"adam": 2, "adamw": 2, "sgd": 1}[name]
    arrays = [x for x in jax.tree_util.tree_leaves(state) if x.ndim]  # not counts / the lr
    assert sum(x.size for x in arrays) == moments * 8
    chex.assert_trees_all_close(optim.learning_rate(state), jnp.float32(0.05))
    grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, state, PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    np.testing.assert_array_equal(new["audio_encoder"]["conv"]["kernel"],
                                  PARAMS["audio_encoder"]["conv"]["kernel"])  # no decay either
    # The decoder moves exactly as the same optimiser on the decoder alone.
    plain = optim.build_optimizer(_cfg(name))
    alone, _ = plain.update(grads["decoder"], optim.fresh_state(plain, PARAMS["decoder"], 0.05),
                            PARAMS["decoder"])
    chex.assert_trees_all_close(updates["decoder"], alone, rtol=0, atol=0)


def test_paper_model_optimizer_state_drops_both_vggish_moments():
    """AVSBench's model (ResNet-50 + VGGish, ``freeze_audio``): Adam's state is smaller by
    exactly 2 x the VGGish parameter count (~72M) when the audio encoder is frozen."""
    config = cavs_config.base_config("finetune", cavs_config.parse_arg("avsbench"))
    model = model_lib.build_model(ml_collections.ConfigDict(
        {**config.model.to_dict(), "num_classes": 71}))
    problem = CAVSProblem(model)
    frozen = problem.param_roles()["frozen"]
    assert frozen == (r"^audio_encoder/",)
    frames = jax.ShapeDtypeStruct((1, 5, 224, 224, 3), jnp.float32)
    audio = jax.ShapeDtypeStruct((1, 5, 96, 64), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 5), jnp.float32)
    params = jax.eval_shape(lambda f, a, m: model.init(jax.random.key(0), f, a, m,
                                                       train=False), frames, audio, mask)["params"]
    vggish = _size(params["audio_encoder"])
    assert 70e6 < vggish < 75e6
    sizes = {}
    for label, regexes in (("all", ()), ("frozen", frozen)):
        tx = optim.build_optimizer(config.optimizer, frozen=regexes)
        sizes[label] = _size(jax.eval_shape(tx.init, params))
    assert sizes["all"] - sizes["frozen"] == 2 * vggish


def test_a_state_with_frozen_leaves_checkpoints_and_restores(tmp_path):
    tx = optim.build_optimizer(_cfg("adam"), frozen=(r"^audio_encoder/",))
    state = create_state({"params": PARAMS}, tx, 2, 0, False, {})
    grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(1, state, {"task": 0}, {})
    template = create_state({"params": PARAMS}, tx, 2, 0, False, {})
    restored, meta, _, _ = checkpointer.restore(template)
    assert meta["task"] == 0
    chex.assert_trees_all_equal(restored.params, state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
