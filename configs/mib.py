"""MiB (Cermelli et al. CVPR 2020): unbiased CE + 10 · unbiased KD + balanced initialisation
of the new classes (spec_cavs §4, §5.5, jax_cavs/problems/cavs/strategies/mib.py).

Hyper-parameters are the reference ``--method MiB`` [MiB/PLOP:argparser.py: loss_kd = 10,
unce, unkd, init_balanced]. Optimiser: the paper lowers the learning rate 10x for the
incremental steps (0.01 -> 0.001 with SGD on VOC); ``config_base`` sets
``optimizer.lr_incremental = lr / 2`` on SynthAVS and ``lr / 10`` in the ``:avsbench`` setting
(see configs/lwf.py); the optimiser is the one all methods share.

  python -m jax_cavs.main --config configs/mib.py --workdir workdirs/mib
  python -m jax_cavs.main --config configs/mib.py:runlocal --workdir /tmp/mib
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    config = config_base.base_config("mib", args)
    config.strategy.loss_kd = 10.0         # --method MiB sets loss_kd = 10 (on UNKD)
    config.strategy.alpha = 1.0            # --alpha default
    config.strategy.init_balanced = True   # --method MiB sets init_balanced
    return config
