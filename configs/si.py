"""SI (Zenke et al. ICML 2017): fine-tuning + λ·Σ Ω (θ − θ*)² with the path-integral
importance Ω accumulated from the actual parameter updates (spec_family §D,
jax_cavs/cl/strategies/si.py).

Defaults: FACIL's path integral [mmasana/FACIL src/approach/path_integral.py: --lamb 0.1
("c", 1e-3 < c < 0.1 in the paper), --damping 0.1 (ξ, the paper's MNIST value; 1e-3 on CIFAR),
penalty λ Σ Ω (θ−θ*)², i.e. c = 1]. Normalisation layers and the classifier head are not
regularised (``exclude_roles``; Avalanche SI excludes BatchNorm, FACIL the heads).

  python -m jax_cavs.main --config configs/si.py --workdir workdirs/si
  python -m jax_cavs.main --config configs/si.py:runlocal --workdir /tmp/si
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    config = config_base.base_config("si", args)
    s = config.strategy
    s.lam = 0.1                             # FACIL --lamb (Zenke et al.'s c)
    s.c = 1.0                               # FACIL: λ Σ Ω (θ−θ*)²
    s.xi = 0.1                              # FACIL --damping
    s.exclude_roles = ("norm", "classifier")  # left free (problem roles)
    return config
