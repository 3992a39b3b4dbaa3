"""Replay: fine-tuning on each task's videos mixed with a memory of k videos per past class
(jax_cavs/cl/strategies/replay.py); the rehearsal baseline without CMR's selection and
resampling. Memory videos keep their true labels restricted to the seen classes.

Defaults: k = 5 videos per class, CMR's budget [spec_cavs §6.4, paper A.3]; uniform random
selection (the "Random" row of CMR's selection ablation).

Arguments (after ``:``, comma-separated):
  selection=random|herding   herding: iCaRL on mean-pooled decoder features of the class
  memory=5                   videos per class
  runlocal                   tiny SynthAVS, small model, 2 epochs

  python -m jax_cavs.main --config configs/replay.py --workdir workdirs/replay
  python -m jax_cavs.main --config configs/replay.py:selection=herding --workdir workdirs/herding
  python -m jax_cavs.main --config configs/replay.py:runlocal --workdir /tmp/replay
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg, selection="random", memory=5)
    config = config_base.base_config("replay", args)
    config.strategy.per_class = args.memory     # k = 5 [CMR A.3]
    config.strategy.selection = args.selection
    return config
