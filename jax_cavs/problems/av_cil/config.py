"""The shared base of the AV-CIL configs (``configs/av_cil*.py``).

``get_config(arg)`` of every AV-CIL config parses ``arg`` with ``parse_arg``:

* a dataset: ``ave``, ``ks`` or ``vs100`` selects the paper's setting (classes per task,
  memory, λ's, 200 epochs, batches 256 + 128, the paper model) on the authors' released
  features read from ``--config.dataset.data_dir=DIR`` (DIR = the authors' ``data/`` folder,
  ``DIR/AVE/category_encode_dict.npy``, ...); none: the embedded ``synth_av_ci``, built on
  first use under ``dataset.data_dir``, at a CPU size.
* ``runlocal``: the same data with a small model and a few epochs (a minute on a CPU; on the
  embedded data also its tiny variant).
* ``modality=audio|visual|audio-visual`` (AV-CIL's Table 2 rows).

Paper settings [AVCIL-code run_incremental_*.sh; spec_family §A6]: Adam lr 1e-3 with torch's
coupled weight decay 1e-4, no decay of the rate, a fresh optimiser per task, 200 epochs per
task, validation after every epoch on the val clips of the seen classes with the best epoch
kept as the task's model and the next teacher, seed 42 (ours: ``seed``).
"""

from __future__ import annotations

import ml_collections

from jax_cavs.core import config_args
from jax_cavs.data import DEFAULT_DATA_DIR

COMMON_ARGS = {"runlocal": False, "ave": False, "ks": False, "vs100": False,
               "modality": "audio-visual"}
# Per dataset: classes per task, memory budget |M|, λ_I (run_incremental_ours.sh l. 3-27).
PAPER = {"ave": (7, 340, 0.5), "ks": (6, 500, 0.1), "vs100": (10, 1500, 0.1)}


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    args = config_args.parse_arg(arg, COMMON_ARGS, **spec)
    chosen = [name for name in PAPER if args[name]]
    if len(chosen) > 1:
        raise ValueError(f"config arguments {' and '.join(chosen)}: choose one dataset.")
    return args


def dataset_of(args) -> str:
    return next((name for name in PAPER if args[name]), "synth_av_ci")


def base_config(strategy: str, args: ml_collections.ConfigDict, **hparams
                ) -> ml_collections.ConfigDict:
    """An AV-CIL experiment with ``strategy`` (its ``hparams``) on the data ``args`` choose."""
    dataset = dataset_of(args)
    config = ml_collections.ConfigDict()
    config.problem = "av_cil"
    config.seed = 0
    config.arg = ml_collections.ConfigDict(args.to_dict())
    config.first_task_from = ""
    config.dataset = ml_collections.ConfigDict(dict(
        name=dataset, data_dir=DEFAULT_DATA_DIR,
        synth=ml_collections.ConfigDict(),  # synth_av_ci sizes (synth.ensure_synth_av_ci)
    ))
    config.scenario = ml_collections.ConfigDict(dict(
        classes_per_task=PAPER[dataset][0] if dataset in PAPER else 5,
        cumulative=False,          # every seen class's clips in every task (the oracle)
    ))
    config.model = ml_collections.ConfigDict(dict(
        modality=args.modality, dim=768 if dataset in PAPER else 64,
        num_frames=8 if dataset in PAPER else 4,
        head="linear",             # "lsc": AFC's local similarity classifier (heads.py)
        nme=False,                 # keep class means for nearest-mean-of-exemplars scores
    ))
    config.evaluation = ml_collections.ConfigDict(dict(
        logits="logits",           # the scores the evaluator ranks (NME: "nme_logits")
    ))
    config.strategy = ml_collections.ConfigDict(dict(name=strategy, **hparams))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adam", lr=1e-3, lr_incremental=1e-3, weight_decay=1e-4, grad_clip=0.0))
    config.train = ml_collections.ConfigDict(dict(
        batch_size=256 if dataset in PAPER else 64,          # current-task clips per step
        exemplar_batch_size=128 if dataset in PAPER else 32,  # exemplar clips per step
        checkpoint_minutes=5.0,    # wall-clock minutes between mid-task checkpoints
        epochs=200 if dataset in PAPER else 30,
        eval_batch_size=128,
        worker_count=0,
        log_every=10,
        checkpoint_every=0,
        batch_to_devices=False,
        validate_every=1,          # every epoch, the best kept (the code's best-val model)
        select_metric="acc.all",
    ))
    config.parallel = ml_collections.ConfigDict(dict(
        data=-1, fsdp=1, distributed="auto", coordinator_address="", num_processes=-1,
        process_id=-1))
    if args.runlocal:
        if dataset not in PAPER:  # the tiny embedded variant: 2 tasks of 4 classes
            config.dataset.synth = ml_collections.ConfigDict(dict(
                num_classes=8, train_per_class=20, val_per_class=4, test_per_class=6))
            config.scenario.classes_per_task = 4
        config.model.dim = 32
        config.train.epochs = 3
        config.train.batch_size = 32
        config.train.exemplar_batch_size = 16
        config.train.eval_batch_size = 64
    return config


def paper_memory(args, default: int) -> int:
    """|M| of the chosen dataset's paper setting (``default`` on the embedded data)."""
    return PAPER[dataset_of(args)][1] if dataset_of(args) in PAPER else default


def paper_lam_i(args, default: float) -> float:
    """λ_I of the chosen dataset (AVE 0.5, K-S and VS100 0.1)."""
    return PAPER[dataset_of(args)][2] if dataset_of(args) in PAPER else default


def herded_memory_scoring(config: ml_collections.ConfigDict, nme: bool) -> None:
    """iCaRL's and AFC's data and scores: exemplars shuffled in with the task's clips (one
    loader) and, with ``nme``, the nearest mean of exemplars scored instead of the head."""
    config.train.exemplar_batch_size = 0
    if nme:
        config.model.nme = True
        config.evaluation.logits = "nme_logits"
