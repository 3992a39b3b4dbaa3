"""LwF on AV-CIL's problem as its authors run it: current-task CE + task-wise KD, no exemplars
[AVCIL-code LwF/, run_incremental_lwf.sh]. Arguments as ``configs/av_cil.py``."""

from jax_cavs.problems.av_cil import config as config_base


def get_config(arg=None):
    config = config_base.base_config("lwf_tkd", config_base.parse_arg(arg))
    config.train.exemplar_batch_size = 0  # no exemplars: one loader
    return config
