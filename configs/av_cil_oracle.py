"""The oracle upper bound of AV-CIL's Table 1: after every task a model trained from scratch on
every seen class's clips [AVCIL-code run_incremental_upper_bound.sh, ``--upper_bound True``].
Arguments as ``configs/av_cil.py``."""

from jax_cavs.problems.av_cil import config as config_base


def get_config(arg=None):
    config = config_base.base_config("oracle", config_base.parse_arg(arg))
    config.strategy.seed = config.get_ref("seed")
    config.scenario.cumulative = True
    config.train.exemplar_batch_size = 0  # one loader over all seen classes
    return config
