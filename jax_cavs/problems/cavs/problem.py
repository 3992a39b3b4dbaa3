"""CAVS as a ``core.problem.Problem``: semantic audio-visual segmentation, class-incremental,
with a shared background (spec_cavs §1-§3).

* batch: ``frames`` float32 [N, T, H, W, 3] (ImageNet-normalised), ``audio`` float32
  [N, T, 96, 64] (VGGish log-mel), ``frame_mask`` [N, T] (real frames), ``labels`` int32
  [N, T, H, W] (255 = ignore), ``label_mask`` [N, T] (annotated frames), ``is_memory`` [N],
  ``index`` [N], ``valid`` [N] (``streams.DecodeClip``);
* model: the AVSBench model (``model.AVSModel``), logits [N, T, H, W, K] over all K classes;
  ``drop={"audio"}`` feeds the log-mel of silence (``data.audio.silent_log_mel``; an all-zero
  log-mel would be a loud broadband sound), so the visual-only twin of CMR, and its
  ``"zero_audio"`` learner, are the same network;
* loss: per-pixel CE over the live classes, mean over the pixels of annotated frames of real
  clips (MiB/PLOP's ``.mean()``); distillation weighs every real frame (``labelled=False``:
  AVSBench v1s annotates frame 0 only, but the teacher sees all five); with
  ``loss.avm_weight`` = λ > 0 every strategy's loss gains λ·AVM (``loss_terms``, AVSBench's
  λ = 0.5; default 0, off);
* evaluator: one confusion matrix over the whole test set, IoU per class, means over the
  classes present in the ground truth (MiB/PLOP); ``old`` / ``new`` / ``all`` as the CMR
  tables (``evaluator``);
* probe: after every task, the test mIoU with the true audio, with silence and with another
  clip's, on the whole test set and on the clips with a silent look-alike distractor
  (``audio_dependence``; ``config.eval.audio_dependence``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_cavs.cl import reduce
from jax_cavs.core import distributed, xla
from jax_cavs.core import scenario as scenario_lib
from jax_cavs.core.problem import Outputs, model_inputs
from jax_cavs.data import audio as audio_lib
from jax_cavs.data import sources
from jax_cavs.models import weights as weights_lib
from jax_cavs.models.audio.vggish import VGGISH_NUM_BANDS, VGGISH_NUM_FRAMES
from jax_cavs.problems.cavs import audio_dependence, class_features
from jax_cavs.problems.cavs import model as model_lib
from jax_cavs.problems.cavs import overlays, report, scenarios, streams
from jax_cavs.problems.cavs.evaluator import SegmentationEvaluator, mask_unseen
from jax_cavs.problems.cavs.losses import segmentation

# Parameter paths of ``model.AVSModel`` ('/'-joined, ``core.roles``).
NORM_LAYERS = (
    r"(^|/)bn\d+/",           # ResNet BatchNorms (bn1 .. bn3, stem bn1)
    r"(^|/)downsample_1/",    # BatchNorm of the ResNet shortcut
    r"(^|/)W_z_1/",           # TPAVI's BatchNorm after W_z
    r"(^|/)norm_layer/",      # TPAVI's LayerNorm
)
CLASSIFIER = (r"^decoder/output_conv_4/",)  # the 1x1 conv producing the K logits
AUDIO_ENCODER = (r"^audio_encoder/",)


def pixel_weights(batch, labelled: bool = True) -> jnp.ndarray:
    """float32 [N, T, 1, 1]: 1 on (annotated, with ``labelled``) frames of real clips,
    broadcastable to the pixels; ``CAVSProblem.weights``."""
    frames = batch["label_mask"] if labelled else batch["frame_mask"]
    return (frames * batch["valid"][:, None])[..., None, None]


def silence_like(audio: jnp.ndarray) -> jnp.ndarray:
    """The log-mel of silence with ``audio``'s shape [N, T, 96, 64] (a constant)."""
    silence = audio_lib.silent_log_mel(audio.shape[1])
    return jnp.broadcast_to(jnp.asarray(silence, audio.dtype), audio.shape)


def _float32(features):
    """Feature-distillation losses run in float32 even when the model computes in bfloat16."""
    return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), features)


@dataclasses.dataclass(eq=False)
class CAVSProblem:
    """The CAVS problem of one run: its model, and (from ``from_config``) its config and
    dataset (see the module doc). ``CAVSProblem(model)`` alone serves the model-side
    methods (apply, loss, weights, predict, parameter roles), e.g. in unit tests."""

    model: model_lib.AVSModel
    config: ml_collections.ConfigDict | None = None
    dataset: sources.Dataset | None = None
    avm_weight: float = 0.0  # λ of ``loss_terms`` (``config.loss.avm_weight``)
    absent_classes: str = "exclude"  # mIoU means (``config.eval.absent_classes``, evaluator)

    name = "cavs"
    has_background = True

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "CAVSProblem":
        dataset = distributed.primary_first(lambda: sources.load_dataset(
            config.dataset.name, config.dataset.config, config.dataset.data_dir))
        model = model_lib.build_model(ml_collections.ConfigDict(
            {**config.model.to_dict(), "num_classes": dataset.num_classes}))
        if config.loss.avm_weight and not model.tpavi_stages:
            raise ValueError("config field loss.avm_weight > 0 needs TPAVI stages (AVM "
                             "matches TPAVI's aligned audio); model.tpavi_stages is empty.")
        return cls(model, config, dataset, avm_weight=float(config.loss.avm_weight),
                   absent_classes=config.eval.absent_classes)

    def __post_init__(self):
        self.evaluator = SegmentationEvaluator(self.num_classes, absent=self.absent_classes)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def image_size(self) -> int:
        return self.config.dataset.image_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.dataset.class_names)

    # -- scenario -------------------------------------------------------------------------
    def scenario(self, joint: bool) -> scenarios.Scenario:
        sc = self.config.scenario
        return scenarios.build_scenario(
            self.dataset.index["train"].classes, self.dataset.index["test"].classes,
            self.num_classes, sc.split, mode=sc.mode, subset=sc.subset,
            disjoint_rule=sc.disjoint_rule, class_order=sc.class_order,
            joint=joint, seed=sc.louvain_seed,
            val_classes=self.dataset.index["val"].classes if "val" in self.dataset.index else ())

    def train_classes(self, indices) -> list[tuple[int, ...]]:
        """The ground-truth classes of training records (memory selection by class)."""
        return [self.dataset.index["train"].classes[int(i)] for i in indices]

    # -- model ----------------------------------------------------------------------------
    def example_batch(self) -> dict[str, jnp.ndarray]:
        size, frames = self.image_size, self.dataset.num_frames
        return {"frames": jnp.zeros((1, frames, size, size, 3)),
                "audio": jnp.zeros((1, frames, VGGISH_NUM_FRAMES, VGGISH_NUM_BANDS)),
                "frame_mask": jnp.ones((1, frames))}

    def init(self, rng: jax.Array) -> dict[str, Any]:
        """Initial variables, with ImageNet ResNet / VGGish weights when configured
        (``config.model_init``; missing files and mismatching keys or shapes are named)."""
        batch = self.example_batch()
        variables = xla.jit(lambda r: self.model.init(
            r, batch["frames"], batch["audio"], batch["frame_mask"], train=False))(rng)
        cfg = self.config.model_init
        dont_load = tuple(cfg.dont_load)
        if cfg.resnet:
            variables = weights_lib.load_torchvision_resnet(
                variables, os.path.expanduser(cfg.resnet), dont_load=dont_load)
        if cfg.vggish:
            variables = weights_lib.load_torchvggish(
                variables, os.path.expanduser(cfg.vggish), dont_load=dont_load)
        return variables

    def apply(self, variables, batch, *, train: bool, drop=frozenset()):
        inputs = model_inputs(batch, drop, {"audio": "audio", "visual": "frames"},
                              "CAVSProblem.apply", absent={"audio": silence_like})
        args = (inputs["visual"], inputs["audio"], batch["frame_mask"])
        if train:
            (logits, features), updates = self.model.apply(variables, *args, train=True,
                                                           mutable=["batch_stats"])
            return Outputs(logits, _float32(features)), updates["batch_stats"]
        logits, features = self.model.apply(variables, *args, train=False)
        return Outputs(logits, _float32(features)), None

    def predict(self, outputs: Outputs, seen) -> jnp.ndarray:
        """int32 [N, T, H, W]: the argmax over the live classes."""
        return jnp.argmax(mask_unseen(outputs.logits, seen), axis=-1)

    def predict_with(self, params, batch_stats, seen, batch, drop=frozenset()) -> jnp.ndarray:
        """``predict`` of the eval-mode model (params, batch_stats) on ``batch``."""
        outputs, _ = self.apply({"params": params, "batch_stats": batch_stats}, batch,
                                train=False, drop=drop)
        return self.predict(outputs, seen)

    def weights(self, batch, *, labelled: bool = True) -> jnp.ndarray:
        return pixel_weights(batch, labelled)

    def loss(self, outputs, batch, classes, labels=None) -> jnp.ndarray:
        labels = batch["labels"] if labels is None else labels
        ce = segmentation.masked_cross_entropy(outputs.logits, labels, classes)
        return reduce.masked_mean(ce, self.weights(batch))

    def loss_terms(self, outputs, batch, classes, *, drop=frozenset()) -> dict[str, jnp.ndarray]:
        """{"avm": λ·AVM}: AVSBench's audio / masked-visual matching over the TPAVI stages and
        the annotated frames of real clips (``segmentation.avm_kl_loss``), added to every
        strategy's loss by the train step; {} when off (λ = 0) or without audio (CMR's twin:
        silence has nothing to match)."""
        if not self.avm_weight or "audio" in drop:
            return {}
        features, logits = outputs.features, outputs.logits
        stages = [i for i, a in enumerate(features["aligned_audio"]) if a is not None]
        avm = segmentation.avm_kl_loss(
            logits.reshape(-1, *logits.shape[2:]),
            [features["aligned_audio"][i] for i in stages], [features["neck"][i] for i in stages],
            self.weights(batch).reshape(-1), classes)
        return {"avm": self.avm_weight * avm}

    def class_statistics(self, outputs, batch) -> dict[str, jnp.ndarray]:
        """Replay selection's per-clip class presence and features (``class_features``)."""
        k = self.num_classes
        out = {"presence": class_features.class_pixels(batch["labels"], k)}
        if outputs is not None:
            sums, weights = class_features.class_feature_sums(
                outputs.features[class_features.HERDING_FEATURE], batch["labels"], k)
            out.update(feature_sums=sums, feature_weights=weights)
        return out

    def param_roles(self) -> dict[str, tuple[str, ...]]:
        return {"classifier": CLASSIFIER, "norm": NORM_LAYERS,
                "frozen": AUDIO_ENCODER if self.model.freeze_audio else ()}

    # -- data -----------------------------------------------------------------------------
    @staticmethod
    def steps_per_epoch(items, batch_size: int) -> int:
        """Replayed clips are shuffled in with the task's (``streams.train_iterator``)."""
        return scenario_lib.steps_per_epoch(len(items), batch_size)

    def train_stream(self, items, task, *, batch_size, num_epochs, seed, worker_count,
                     shard_index, shard_count):
        keep = task.current if task.label_policy == "current" else task.seen
        return streams.train_iterator(
            self.dataset.sources["train"], items, current_mask=keep, seen_mask=task.seen,
            batch_size=batch_size, num_epochs=num_epochs, seed=seed,
            image_size=self.image_size, worker_count=worker_count, shard_index=shard_index,
            shard_count=shard_count)

    def eval_batches(self, split, indices, classes, *, batch_size, worker_count,
                     shard_index, shard_count, audio=streams.OWN_AUDIO):
        """``streams.eval_batches``; ``audio`` another clip's or silence (the probes)."""
        return streams.eval_batches(
            self.dataset.sources[split], indices, seen_mask=np.asarray(classes),
            batch_size=batch_size, image_size=self.image_size, worker_count=worker_count,
            shard_index=shard_index, shard_count=shard_count, audio=audio)

    @functools.cached_property
    def _distractor_clips(self) -> frozenset[int]:
        """Test records with a silent look-alike distractor (read once per run)."""
        source = self.dataset.sources["test"]
        return frozenset(audio_dependence.silent_lookalike_clips(
            source, range(len(source)), self.dataset.metadata.get("lookalike_pairs", ())))

    def probe_scores(self, evaluate, scenario, t, scores) -> dict[str, Any]:
        """``{"audio_dependence": ...}`` after task ``t`` (``audio_dependence.measure``);
        {} with ``config.eval.audio_dependence`` off."""
        if not self.config.eval.audio_dependence:
            return {}
        indices = [int(i) for i in scenario.test_indices]
        distractors = [i for i in indices if i in self._distractor_clips]
        return {"audio_dependence": audio_dependence.measure(evaluate, indices, distractors,
                                                             scores)}

    # -- report ---------------------------------------------------------------------------
    def report_inputs(self, forward, state, scenario, t, batches) -> dict[str, Any]:
        """``core.report.write_report``'s problem inputs after task ``t``: class names and
        qualitative overlays (``overlays.overlay_examples``)."""
        return {"class_names": list(self.class_names),
                "overlays": overlays.overlay_examples(self, forward, state, scenario, t,
                                                      batches)}

    @staticmethod
    def report_panels(workdir: str, **inputs) -> report.CAVSPanels:
        """CAVS's panels of ``core.report`` for ``workdir`` (``report.CAVSPanels``)."""
        return report.CAVSPanels(workdir, **inputs)
