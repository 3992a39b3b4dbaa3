"""Continual strategies, one module per method; importing this package registers them all."""

from jax_cavs.strategies import finetune, joint  # noqa: F401  (registration)
from jax_cavs.strategies.base import Strategy, available, get_strategy  # noqa: F401
