"""PLOP (Douillard et al. CVPR 2021): entropy pseudo-labels with the adaptive factor + Local
POD + balanced initialisation (spec_cavs §5.6, jax_cavs/problems/cavs/strategies/plop.py).

Hyper-parameters are the reference ``--method PLOP`` [PLOP:argparser.py]. ``pod_pre_logits``
is the spec §5.6(b) DECISION ("decoder": D1; "neck": the deepest TPAVI-fused map).
Optimiser: PLOP lowers the learning rate 10x for the incremental steps (0.01 -> 0.001 with
SGD); ``config_base`` sets ``optimizer.lr_incremental = lr / 2`` on SynthAVS and ``lr / 10``
in the ``:avsbench`` setting (see configs/lwf.py); the optimiser is the one all methods of the
comparison share.

``official``: PLOP as the CMR authors' code runs it (``config_base.authors_plop_code``: POD
schedule off, their POD maps, no adaptive factor, absent classes counted 0; on AVSBench lr
1e-4 at every step, 4 clips per step).

  python -m jax_cavs.main --config configs/plop.py --workdir workdirs/plop
  python -m jax_cavs.main --config configs/plop.py:runlocal --workdir /tmp/plop
  python -m jax_cavs.main --config configs/plop.py:official --workdir workdirs/plop_official
"""

from jax_cavs.problems.cavs import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg, official=False)
    config = config_base.base_config("plop", args)
    config.strategy.pod_factor = 0.01           # --pod_factor 0.01, pod = "local"
    config.strategy.pod_logits_factor = 0.0005  # pod_options switch.after.factor (logits)
    config.strategy.pod_scales = (1, 2, 4)      # _local_pod default spp_scales
    config.strategy.pod_schedule = True         # use_pod_schedule
    config.strategy.pod_stages = "backbone"     # DECISION: ResNet stages ("neck": the CMR
                                                # authors' post-TPAVI maps, train.py:622-631)
    config.strategy.pod_pre_logits = "decoder"  # DECISION (spec §5.6(b)): D1
    config.strategy.pod_logits = "small"        # DECISION: H/2 logits ("full": CMR's code)
    config.strategy.pseudo_threshold = 0.001    # --pseudo entropy --threshold 0.001
    config.strategy.adaptive_factor = True      # --classif_adaptive_factor
    config.strategy.init_balanced = True        # --init_balanced
    if args.official:
        config_base.authors_plop_code(config)
    return config
