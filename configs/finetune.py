"""Fine-tuning baseline (lower bound): plain CE on each task's labels, nothing else.

  python -m jax_cavs.main --config configs/finetune.py --workdir workdirs/finetune
  python -m jax_cavs.main --config configs/finetune.py:runlocal --workdir /tmp/ft
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    return config_base.base_config("finetune", args)
