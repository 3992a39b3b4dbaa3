"""AV-CIL (Pian et al., ICCV 2023): SS-IL + dual audio-visual similarity + visual attention
distillation (``jax_cavs/problems/av_cil/strategies/av_cil.py``).

  python -m jax_cavs.main --config configs/av_cil.py                  # embedded synth_av_ci
  python -m jax_cavs.main --config configs/av_cil.py:ave --config.dataset.data_dir=DIR
  python -m jax_cavs.main --config configs/av_cil.py:ks,runlocal --config.dataset.data_dir=DIR

``ave`` / ``ks`` / ``vs100`` select the paper's setting on the released features (DIR = the
authors' ``data/`` folder); ``modality=audio|visual`` the Table 2 rows (AV-CIL is then SS-IL).
Paper values [AVCIL-code run_incremental_ours.sh]: |M| = 340 / 500 / 1500, λ_I = 0.5 / 0.1 /
0.1, λ_C = 1, λ_VAD = 0.5, τ = 0.05. Embedded data: |M| = 120 (6 clips per class after the
last task, AVE's ~10% of a class's training clips), λ_I = 0.5.
"""

from jax_cavs.problems.av_cil import config as config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg)
    return config_base.base_config(
        "av_cil", args, memory_size=config_base.paper_memory(args, 120),
        lam_i=config_base.paper_lam_i(args, 0.5), lam_c=1.0, lam_vad=0.5, tau_i=0.05,
        tau_c=0.05, per_positive=False, vad=True)
