"""EWC (Kirkpatrick et al. PNAS 2017): fine-tuning + λ·c·Σ F (θ − θ*)² with the diagonal
empirical Fisher F of every past task (spec_family §D, jax_cavs/cl/strategies/ewc.py).

Defaults: FACIL's λ and penalty [mmasana/FACIL src/approach/ewc.py: --lamb 5000,
Σ F (θ−θ*)² / 2] with online consolidation F ← γF + F_new, γ = 1 (Schwarz et al.;
Avalanche/Mammoth EWC-on), not FACIL's merge F ← ½F + ½F_new: that is
``--config.strategy.gamma=0.5 --config.strategy.lam=2500`` (jax_cavs/cl/strategies/ewc.py).
Normalisation layers and the classifier head are not regularised (``exclude_roles``).

Arguments (after ``:``, comma-separated):
  mode=online|separate   consolidation of the per-task Fisher matrices
  runlocal               tiny SynthAVS, small model, 2 epochs

  python -m jax_cavs.main --config configs/ewc.py --workdir workdirs/ewc
  python -m jax_cavs.main --config configs/ewc.py:runlocal --workdir /tmp/ewc
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg, mode="online")
    config = config_base.base_config("ewc", args)
    s = config.strategy
    s.lam = 5000.0                          # FACIL --lamb
    s.c = 0.5                               # FACIL: Σ F (θ−θ*)² / 2
    s.mode = args.mode
    s.gamma = 1.0                           # online decay γ (1: no decay)
    s.exclude_roles = ("norm", "classifier")  # left free (problem roles)
    return config
