"""LwF (Li & Hoiem 2016, segmentation version of MiB/PLOP): CE + 100 · output KD on the old
classes (spec_cavs §5.2, jax_cavs/cl/strategies/lwf.py).

Hyper-parameters are the reference ``--method LWF`` [MiB/PLOP:argparser.py]. Optimiser: the
papers only lower the learning rate 10x for the incremental steps (0.01 -> 0.001 with SGD).
``config_base`` lowers it for every method alike: ``optimizer.lr_incremental = lr / 2`` on
SynthAVS (our from-scratch CPU model barely learns new classes at lr / 10) and ``lr / 10`` in
the ``:avsbench`` setting; the optimiser itself stays the one every method of the comparison
shares.

  python -m jax_cavs.main --config configs/lwf.py --workdir workdirs/lwf
  python -m jax_cavs.main --config configs/lwf.py:runlocal --workdir /tmp/lwf
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    config = config_base.base_config("lwf", args)
    config.strategy.loss_kd = 100.0  # MiB/PLOP argparser: --method LWF sets loss_kd = 100
    config.strategy.alpha = 1.0      # --alpha default (teacher logits factor)
    return config
