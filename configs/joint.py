"""Joint training (offline upper bound): one task with every class of the scenario.

The scenario's split only defines the old/new groups of the report, so the row is comparable
with the continual methods trained on the same split.

  python -m jax_cavs.main --config configs/joint.py --workdir workdirs/joint
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    return config_base.base_config("joint", args)
