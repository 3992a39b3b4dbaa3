"""iCaRL on AV-CIL's problem (its Table 1): CE + the code's sigmoid distillation, herded
exemplars shuffled in with the task's clips, and a nearest-mean-of-exemplars (``nme``,
default) or the FC classifier (``fc``) at test time
(``jax_cavs/problems/av_cil/strategies/icarl.py``) [AVCIL-code run_incremental_icarl.sh].

  python -m jax_cavs.main --config configs/av_cil_icarl.py            # iCaRL-NME
  python -m jax_cavs.main --config configs/av_cil_icarl.py:fc         # iCaRL-FC

Other arguments as ``configs/av_cil.py``.
"""

from jax_cavs.problems.av_cil import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg, fc=False)
    config = config_base.base_config("icarl", args,
                                     memory_size=config_base.paper_memory(args, 120))
    config_base.herded_memory_scoring(config, nme=not args.fc)
    return config
