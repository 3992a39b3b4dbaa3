"""ILT (Michieli & Zanuttigh 2019): LwF + feature distillation of the backbone output
(spec_cavs §5.3, jax_cavs/problems/cavs/strategies/ilt.py).

Hyper-parameters are the reference ``--method ILT`` [MiB:argparser.py]. ``strategy.feature``
is the DECISION of spec §5.3: ``"backbone"`` (ResNet layer4, DeepLab's ``body``), or
``"neck"`` (deepest TPAVI-fused map) / ``"decoder"`` (D1). Optimiser: as configs/lwf.py
(the papers lower the incremental learning rate 10x; ``config_base``'s ``lr_incremental`` is
``lr / 2`` on SynthAVS, ``lr / 10`` in the ``:avsbench`` setting).

  python -m jax_cavs.main --config configs/ilt.py --workdir workdirs/ilt
  python -m jax_cavs.main --config configs/ilt.py:runlocal --workdir /tmp/ilt
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    config = config_base.base_config("ilt", args)
    config.strategy.loss_kd = 100.0       # MiB argparser: --method ILT sets loss_kd = 100
    config.strategy.alpha = 1.0           # --alpha default
    config.strategy.loss_de = 100.0       # --method ILT sets loss_de = 100
    config.strategy.feature = "backbone"  # DECISION (spec §5.3): layer4, DeepLab's "body"
    return config
