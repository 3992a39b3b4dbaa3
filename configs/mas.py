"""MAS (Aljundi et al. ECCV 2018): fine-tuning + λ·c·Σ Ω (θ − θ*)² with Ω the sensitivity of
the L2 norm of the (seen-class) logits to each parameter (spec_family §D,
jax_cavs/cl/strategies/mas.py).

Defaults: FACIL's MAS [mmasana/FACIL src/approach/mas.py: --lamb 1, --alpha 0.5
(Ω ← αΩ + (1−α)Ω_new), penalty Σ Ω (θ−θ*)² / 2]. Normalisation layers and the classifier head
are not regularised (``exclude_roles``).

  python -m jax_cavs.main --config configs/mas.py --workdir workdirs/mas
  python -m jax_cavs.main --config configs/mas.py:runlocal --workdir /tmp/mas
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    config = config_base.base_config("mas", args)
    s = config.strategy
    s.lam = 1.0                             # FACIL --lamb
    s.c = 0.5                               # FACIL: Σ Ω (θ−θ*)² / 2
    s.alpha = 0.5                           # FACIL --alpha
    s.exclude_roles = ("norm", "classifier")  # left free (problem roles)
    return config
