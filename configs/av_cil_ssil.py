"""SS-IL on AV-CIL's problem (its Table 1): separated softmax, task-wise KD, random exemplars
[AVCIL-code run_incremental_ssil.sh]. Arguments as ``configs/av_cil.py``."""

from jax_cavs.problems.av_cil import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    return config_base.base_config("ssil", args,
                                   memory_size=config_base.paper_memory(args, 120))
