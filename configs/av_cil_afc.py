"""AFC (Kang et al., CVPR 2022) on AV-CIL's problem (its Table 1): the local similarity
classifier with NCA loss, importance-weighted feature distillation (λ_disc = 0.5 from the run
script), imprinted new proxies and herded exemplars; scored by nearest mean of exemplars
(``nme``, default) or by the LSC (``lsc``)
(``jax_cavs/problems/av_cil/strategies/afc.py``) [AVCIL-code run_incremental_afc.sh].

  python -m jax_cavs.main --config configs/av_cil_afc.py              # AFC-NME
  python -m jax_cavs.main --config configs/av_cil_afc.py:lsc          # AFC-LSC

Other arguments as ``configs/av_cil.py``.
"""

from jax_cavs.problems.av_cil import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg, lsc=False)
    config = config_base.base_config("afc", args, lam_disc=0.5,
                                     memory_size=config_base.paper_memory(args, 120))
    config.model.head = "lsc"
    config_base.herded_memory_scoring(config, nme=not args.lsc)
    return config
