"""AV-CIL as a ``core.problem.Problem``: class-incremental classification of pre-extracted
audio-visual features (Pian et al., ICCV 2023; spec_family §A).

One clip = an audio vector f^a [D_a] and visual tokens [L·S, D_v] (``release``: the authors'
released layout, real or the embedded ``synth_av_ci``); the model is ``model.AVCILNet``; the
scenario fixes the classes per task (``scenarios``); batches are the code's current +
exemplar batches (``streams``); scores are top-1 accuracies (``evaluator``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_cavs.core import xla
from jax_cavs.core.problem import Outputs, model_inputs
from jax_cavs.problems.av_cil import losses, release, scenarios, streams, synth
from jax_cavs.problems.av_cil.evaluator import ClassificationEvaluator
from jax_cavs.problems.av_cil.model import AVCILNet

CLASSIFIER = (r"^classifier/",)
# The class means of the nearest-mean-of-exemplars classifier: set by the strategy between
# epochs (iCaRL, AFC), never by the optimiser (no weight decay either).
NME_MEANS = (r"^nme/",)


@dataclasses.dataclass(eq=False)  # hashed by identity: jit caches key on it
class AVCILProblem:
    """The problem object of an AV-CIL config (``configs/av_cil*.py``)."""

    config: ml_collections.ConfigDict
    release: release.Release

    name = "av_cil"
    has_background = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "AVCILProblem":
        data = config.dataset
        data_dir = os.path.expanduser(data.data_dir)
        if data.name == "synth_av_ci":
            data_dir = synth.ensure_synth_av_ci(data_dir, **data.synth.to_dict())
        elif data.name not in release.DATASETS:
            raise ValueError(f"config field dataset.name={data.name!r} is not one of "
                             f"{sorted(release.DATASETS)}.")
        return cls(config, release.open_release(data_dir, data.name))

    def __post_init__(self):
        cfg = self.config.model
        self.model = AVCILNet(self.num_classes, modality=cfg.modality, dim=cfg.dim,
                              num_frames=cfg.num_frames, head=cfg.head, nme=cfg.nme)
        self.evaluator = ClassificationEvaluator(self.num_classes,
                                                 self.config.evaluation.logits)
        self.sources = {split: release.FeatureSource(self.release, split)
                        for split in ("train", "val", "test")}

    @property
    def num_classes(self) -> int:
        return len(self.release.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.release.class_names

    def labels(self, split: str) -> np.ndarray:
        return self.release.splits[split][1]

    def scenario(self, joint: bool):
        sc = self.config.scenario
        return scenarios.build_scenario(
            self.labels("train"), self.labels("val"), self.labels("test"), self.num_classes,
            sc.classes_per_task, cumulative=sc.cumulative, joint=joint)

    # -- model ----------------------------------------------------------------------------
    def example_batch(self) -> dict[str, jnp.ndarray]:
        tokens, width = self.release.visual_shape
        return {"audio": jnp.zeros((1, self.release.audio_dim)),
                "visual": jnp.zeros((1, tokens, width)), "label": jnp.zeros((1,), jnp.int32),
                "is_memory": jnp.zeros((1,)), "valid": jnp.ones((1,))}

    def init(self, rng: jax.Array) -> dict[str, Any]:
        batch = self.example_batch()
        return xla.jit(lambda r: self.model.init(r, batch["audio"], batch["visual"]))(rng)

    def apply(self, variables, batch, *, train: bool, drop=frozenset()):
        """Eval and train mode are the same function (no dropout, no batch norm)."""
        inputs = model_inputs(batch, drop, {"audio": "audio", "visual": "visual"},
                              "AVCILProblem.apply")
        logits, features = self.model.apply({"params": variables["params"]}, inputs["audio"],
                                            inputs["visual"])
        return Outputs(logits, features), ({} if train else None)

    def predict(self, outputs: Outputs, seen) -> jnp.ndarray:
        """int32 [B]: the argmax of the evaluated scores over the seen classes."""
        return jnp.argmax(jnp.where(seen, self.evaluator.scores(outputs), losses.NEG_INF), -1)

    def weights(self, batch, *, labelled: bool = True) -> jnp.ndarray:
        return batch["valid"]

    def loss(self, outputs, batch, classes, labels=None) -> jnp.ndarray:
        labels = batch["label"] if labels is None else labels
        return losses.masked_ce(outputs.logits, labels, classes, batch["valid"])

    def class_statistics(self, outputs, batch) -> dict[str, jnp.ndarray]:
        """One-hot membership of each clip's class and, given outputs, its fused feature."""
        presence = jax.nn.one_hot(batch["label"], self.num_classes) * batch["valid"][:, None]
        out = {"presence": presence}
        if outputs is not None:
            out.update(feature_sums=presence[..., None] * outputs.features["fused"][:, None],
                       feature_weights=presence)
        return out

    def param_roles(self) -> dict[str, tuple[str, ...]]:
        return {"classifier": CLASSIFIER, "norm": (), "frozen": NME_MEANS}

    # -- data -----------------------------------------------------------------------------
    def steps_per_epoch(self, items, batch_size: int) -> int:
        return streams.epoch_steps(items, batch_size, self.config.train.exemplar_batch_size)

    def train_stream(self, items, task, *, batch_size, num_epochs, seed, worker_count,
                     shard_index, shard_count):
        return streams.train_iterator(
            self.sources["train"], items, batch_size=batch_size,
            exemplar_batch_size=self.config.train.exemplar_batch_size, num_epochs=num_epochs,
            seed=seed, worker_count=worker_count, shard_index=shard_index,
            shard_count=shard_count)

    def eval_batches(self, split, indices, classes, *, batch_size, worker_count,
                     shard_index, shard_count):
        return streams.eval_batches(self.sources[split], indices, batch_size=batch_size,
                                    worker_count=worker_count, shard_index=shard_index,
                                    shard_count=shard_count)

    # -- report ---------------------------------------------------------------------------
    def report_inputs(self, forward, state, scenario, t, batches) -> dict[str, Any]:
        return {"class_names": list(self.class_names)}

    @staticmethod
    def report_panels(workdir: str, class_names=()):
        from jax_cavs.problems.av_cil.report import AVCILPanels

        return AVCILPanels(class_names)
