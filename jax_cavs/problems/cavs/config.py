"""The shared base of every experiment config (``configs/<method>.py`` build on it).

Configs follow big_vision: ``get_config(arg)`` returns an ``ml_collections.ConfigDict``; the
single ``arg`` string (``--config configs/cmr.py:runlocal,memory=3``) selects variants and is
parsed by ``parse_arg``. Fields are then overridable on the command line as
``--config.scenario.split=60-10``; the config is locked so a misspelt field is an error.

Every config accepts ``runlocal``: the tiny SynthAVS variant, a smaller model and a couple of
epochs, so a whole continual run takes well under a minute on one CPU core.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from jax_cavs.core import config_args
from jax_cavs.data import DEFAULT_DATA_DIR  # noqa: F401 (the configs' default)

WEIGHTS_DIR = os.environ.get(
    "JAX_CAVS_WEIGHTS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jax_cavs", "weights"))


COMMON_ARGS = {"runlocal": False, "avsbench": False}


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """``core.config_args.parse_arg`` with the arguments every CAVS config accepts
    (``runlocal``, ``avsbench``)."""
    return config_args.parse_arg(arg, COMMON_ARGS, **spec)


def base_config(strategy: str, args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The default continual experiment: SynthAVS ``small``, the 12-4 overlapped split."""
    config = ml_collections.ConfigDict()
    config.problem = "cavs"        # jax_cavs/problems/<name>
    config.seed = 0
    config.arg = ml_collections.ConfigDict(args.to_dict())
    # --workdir of a finished run whose trained first task this run reuses instead of
    # training it (MiB/PLOP's --step_ckpt; checked to be the same first task). "": train it.
    config.first_task_from = ""

    config.dataset = ml_collections.ConfigDict(dict(
        name="synth_avs",          # a module of data_pipelines/ registering the TFDS builder
        config="small",            # builder config
        data_dir=DEFAULT_DATA_DIR,  # built there on first use, reused afterwards
        image_size=64,             # model input resolution (frames are resized to it)
    ))
    config.scenario = ml_collections.ConfigDict(dict(
        split="12-4",              # N classes first, then M per task
        mode="overlapped",         # or "disjoint" (Louvain class order, strict filtering)
        subset="all",              # "cis" single-source / "cim" multi-source videos only
        disjoint_rule="strict",
        # A name ("sequential", "louvain", or the CMR authors' AVSBench "60-10a", "60-5a",
        # "65-s1", "65-ss") or an explicit tuple of the foreground classes; () = the mode's
        # default (sequential for overlapped, Louvain for disjoint). problems/cavs/scenarios.py
        class_order=ml_collections.FieldReference((), field_type=object),
        louvain_seed=0,
    ))
    config.model = ml_collections.ConfigDict(dict(
        backbone_depth=18,
        backbone_width=0.25,
        neck_channels=32,
        neck_dilations=(1, 2, 3, 4),
        tpavi_stages=(0, 1, 2, 3),
        tpavi_inter_channels=16,
        tpavi_group=5,
        # TPAVI's output BatchNorm scale at init: 0 (AVSBench's) gives the audio path no
        # gradient at the start; model_init never loads TPAVI, so this is its start in every
        # run, pretrained encoders or not. 0.1 opens it (models/fusion/tpavi.py).
        tpavi_gate_init=0.0,
        audio_width=0.125,         # 0.25 costs 40% more per step for no gain on SynthAVS
        freeze_audio=False,        # VGGish is frozen only when pretrained weights are loaded
        dtype="float32",           # compute dtype; "bfloat16": mixed precision (params,
                                   # logits and loss stay float32)
        remat_backbone=False,      # recompute backbone activations in the backward pass
    ))
    config.strategy = ml_collections.ConfigDict(dict(name=strategy))
    config.loss = ml_collections.ConfigDict(dict(
        avm_weight=0.0,            # λ of AVSBench's AVM audio / visual matching term added to
                                   # every method's loss (AVSBench: 0.5); 0: off
    ))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adam",
        lr=1e-3,                   # first task
        lr_incremental=5e-4,       # later tasks; PLOP/MiB use 10x lower with a pretrained
                                   # backbone, but our from-scratch CPU model then barely
                                   # learns the new classes (9% mIoU at 1e-4 on SynthAVS)
        weight_decay=0.0,
        grad_clip=1.0,             # global-norm clipping; 0 disables
    ))
    config.train = ml_collections.ConfigDict(dict(
        batch_size=4,              # clips per step (x frames per clip)
        epochs=10,                 # per task (the CPU budget; the paper uses 30)
        eval_batch_size=8,
        worker_count=1,            # grain worker processes (0: in-process)
        log_every=25,
        checkpoint_every=0,        # steps between mid-task checkpoints (0: off)
        checkpoint_minutes=5.0,    # wall-clock minutes between mid-task checkpoints (0: off)
        batch_to_devices=False,    # round batch sizes up to multiples of the device count
        validate_every=0,          # epochs between validations on the 'val' split (AVSBench);
                                   # the best epoch ends the task (0: off, the last epoch)
        select_metric="miou.all",  # the validation score that picks it (core.validation)
    ))
    config.eval = ml_collections.ConfigDict(dict(
        # After every task, the test mIoU with silence and with another clip's audio beside
        # the true one (metrics.json's audio_dependence, problems/cavs/audio_dependence.py):
        # two more passes over the test set and three over its distractor clips.
        audio_dependence=True,
        # Classes absent from the test ground truth in the mIoU means: "exclude" (ours, as
        # MiB/PLOP's per-class table) or "zero" (the CMR authors' code,
        # avss/utils/compute_color_metrics.py:112, avss/test.py:200-201; metrics.group_miou).
        absent_classes="exclude",
    ))
    config.parallel = ml_collections.ConfigDict(dict(
        data=-1,                   # devices on the data axis (-1: all that fsdp leaves)
        fsdp=1,                    # devices each large parameter is split over
        distributed="auto",        # jax.distributed: "auto" (cluster env), "on", "off"
        coordinator_address="",    # "host:port" of process 0 ("": from the cluster env)
        num_processes=-1,          # -1: from the cluster environment
        process_id=-1,             # -1: from the cluster environment
    ))
    config.model_init = ml_collections.ConfigDict(dict(
        resnet="",                 # torchvision ResNet state dict (.pth/.safetensors); "": none
        vggish="",                 # torchvggish state dict; "": random init
        dont_load=(),              # regexes over the sub-models' leaves not to load
    ))
    if args.get("avsbench", False):
        avsbench(config, runlocal=args.get("runlocal", False))
    elif args.get("runlocal", False):
        config.dataset.config = "tiny"
        config.dataset.image_size = 32
        config.model.neck_channels = 16
        config.model.tpavi_inter_channels = 8
        config.scenario.split = "6-2"
        config.train.epochs = 2
        config.train.batch_size = 2
        config.train.batch_to_devices = True  # runs as written on 8 simulated devices
        config.train.worker_count = 0
        config.train.log_every = 5
    return config


def avsbench(config: ml_collections.ConfigDict, runlocal: bool) -> None:
    """The CMR paper's setting on AVSBench-semantic (spec_cavs §1, §3.5, §6.4).

    The data is read from ``dataset.data_dir`` (built there from the official release by
    ``python -m data_pipelines.avsbench_semantic``; the error names the missing directory) and
    the ImageNet ResNet-50 / VGGish weights from ``model_init`` (default: ``$JAX_CAVS_WEIGHTS_DIR``
    or ``~/.cache/jax_cavs/weights``). With ``runlocal``: a small AVSBench-layout tree (as the
    tests write) at 64x64, the CPU model and no pretrained weights.
    """
    config.dataset.update(dict(name="avsbench_semantic", config="default", image_size=224))
    # CMR Table 7's sequential order (new = ids 61-70) in both modes, not a Louvain order:
    # overlapped and disjoint differ only by their sample filter (data/avsbench_classes.py).
    config.scenario.update(dict(split="60-10", mode="disjoint", class_order="sequential"))
    config.model.update(dict(
        backbone_depth=50, backbone_width=1.0, neck_channels=256, neck_dilations=(3, 6, 12, 18),
        tpavi_stages=(0, 1, 2, 3), tpavi_inter_channels=128, tpavi_group=5, audio_width=1.0,
        freeze_audio=True))
    config.model_init.resnet = os.path.join(WEIGHTS_DIR, "resnet50-19c8e357.pth")
    config.model_init.vggish = os.path.join(WEIGHTS_DIR, "vggish-10086976.pth")
    config.optimizer.update(dict(name="adam", lr=1e-4, lr_incremental=1e-5))
    config.train.update(dict(batch_size=8, epochs=30))  # 2 videos/GPU x 4 GPUs, 30 epochs
    if runlocal:
        config.dataset.update(dict(config="res64", image_size=64))
        config.scenario.update(dict(split="6-2", mode="overlapped"))
        config.model.update(dict(
            backbone_depth=18, backbone_width=0.25, neck_channels=16, neck_dilations=(1, 2, 3, 4),
            tpavi_inter_channels=8, tpavi_group=5, audio_width=0.125, freeze_audio=False))
        config.model_init.update(dict(resnet="", vggish=""))
        config.optimizer.update(dict(lr=1e-3, lr_incremental=5e-4))
        config.train.update(dict(batch_size=2, epochs=1, worker_count=0, log_every=5,
                                 batch_to_devices=True))


def authors_plop_code(config: ml_collections.ConfigDict) -> None:
    """PLOP as the CMR authors' code runs it (``../shared/design/cmr_official_code.md`` d, f;
    ``configs/plop.py:official``, and under CMR's): POD schedule off (``avss/config.py:99-100``),
    the 4 post-TPAVI neck maps, the decoder output and the full-resolution logits distilled
    (``avss/train.py:622-631``), the adaptive factor without effect (``avss/loss.py:491`` adds
    the loss before ``:507`` scales it), absent classes counted 0 in the mIoU means
    (``avss/utils/compute_color_metrics.py:112``); on AVSBench Adam at 1e-4 at every step and 4
    clips per step (``avss/config.py``; 1 clip x 4 GPUs)."""
    config.strategy.update(dict(pod_schedule=False, pod_stages="neck", pod_pre_logits="decoder",
                                pod_logits="full", adaptive_factor=False))
    config.eval.absent_classes = "zero"
    if config.dataset.name == "avsbench_semantic" and not config.arg.get("runlocal", False):
        config.optimizer.update(dict(lr=1e-4, lr_incremental=1e-4))
        config.train.batch_size = 4
