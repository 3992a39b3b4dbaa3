"""LwF-MC (iCaRL's multi-class LwF without exemplars): per-class BCE + 10 · sigmoid
distillation of the old classes (spec_cavs §5.4, jax_cavs/problems/cavs/strategies/lwf_mc.py).

Hyper-parameters are the reference ``--method LWF-MC`` [MiB:argparser.py: icarl = True,
icarl_importance = 10, combined mode]. Optimiser: as configs/lwf.py (the papers lower
the incremental learning rate 10x; ``config_base``'s ``lr_incremental`` is ``lr / 2`` on
SynthAVS, ``lr / 10`` in the ``:avsbench`` setting).

  python -m jax_cavs.main --config configs/lwf_mc.py --workdir workdirs/lwf_mc
  python -m jax_cavs.main --config configs/lwf_mc.py:runlocal --workdir /tmp/lwf_mc
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    config = config_base.base_config("lwf_mc", args)
    config.strategy.icarl_importance = 10.0  # MiB argparser: --method LWF-MC
    return config
