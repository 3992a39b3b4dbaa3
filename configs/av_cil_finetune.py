"""Fine-tuning on AV-CIL's problem (the lower bound of its Table 1): CE over every seen class
on the current task's clips only [AVCIL-code fine_tuning/, run_incremental_fine_tuning.sh].
Arguments as ``configs/av_cil.py``."""

from jax_cavs.problems.av_cil import config as config_base


def get_config(arg=None):
    config = config_base.base_config("finetune", config_base.parse_arg(arg))
    config.train.exemplar_batch_size = 0  # no exemplars: one loader
    return config
