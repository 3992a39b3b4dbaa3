"""The optimiser: Adam / AdamW / SGD (+ global-norm clipping) on the trainable parameters only.

Weight decay follows torch: AdamW decays decoupled from the moments; Adam and SGD add
``weight_decay · θ`` to the gradient before the moments (torch ``Adam(weight_decay=...)``'s
coupled L2, which AV-CIL's code uses: ``add_decayed_weights`` then ``adam``).

Leaves of the problem's "frozen" role (``core.roles``; CAVS: VGGish when ``freeze_audio``)
get ``optax.set_to_zero``: no moments are allocated for them and they never move, not even
under AdamW's weight decay (a ``stop_gradient`` alone would leave both). The learning rate is
an injected hyper-parameter of the state, so every task starts a fresh optimiser at its own
rate (PLOP/MiB) without re-compiling the step.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import ml_collections
import optax

from jax_cavs.core import roles

OPTIMIZERS = ("adam", "adamw", "sgd")


def build_optimizer(cfg: ml_collections.ConfigDict, frozen: Sequence[str] = ()
                    ) -> optax.GradientTransformation:
    """The optimiser of config section ``optimizer``; ``frozen``: regexes of leaves that are
    never updated and carry no optimiser state."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"config field optimizer.name={cfg.name!r}; valid: "
                         f"{', '.join(OPTIMIZERS)}.")
    frozen = tuple(frozen)
    roles.compile_regexes(frozen, "frozen role")

    def make(learning_rate):
        core = {"adam": lambda: optax.adam(learning_rate),
                "adamw": lambda: optax.adamw(learning_rate, weight_decay=cfg.weight_decay),
                "sgd": lambda: optax.sgd(learning_rate, momentum=0.9, nesterov=True)}[cfg.name]()
        parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
        if cfg.name in ("sgd", "adam") and cfg.weight_decay > 0:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        train = optax.chain(*parts, core)
        if not frozen:
            return train
        return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()},
                                     roles.labeller(frozen, inside="frozen", outside="train"))

    return optax.inject_hyperparams(make)(learning_rate=cfg.lr)


def learning_rate(opt_state) -> jnp.ndarray:
    """The current learning rate of an optimiser state made by ``build_optimizer``."""
    return opt_state.hyperparams["learning_rate"]


def fresh_state(tx: optax.GradientTransformation, params, rate: float):
    """A new optimiser state for ``params`` at learning rate ``rate``."""
    opt_state = tx.init(params)
    hyper = dict(opt_state.hyperparams, learning_rate=jnp.asarray(rate, jnp.float32))
    return opt_state._replace(hyperparams=hyper)
