"""CMR (Hong et al. 2025): PLOP's loss + a memory selected by MSS + rehearsal resampled by CSR.

"Our method builds upon the best-performing PLOP model combined with the memory" [paper A.3].
Per task t (spec_cavs §6.1; the ordering is inferred)::

    begin_task    PLOP: teacher snapshot f^av_{t-1}, balanced init of the new classifiers
    prepare_task  PLOP: entropy thresholds on the new videos
                  CSR:  f^av_{t-1} on the new videos -> collision statistics -> probabilities
                        over the old classes -> R = round(0.2 |M|) draws from the memory M
    replay_ids    M ⊎ R (duplicates allowed), mixed at random with the task's videos
    training      PLOP's loss (pseudo-labels + Local POD) on D_t ∪ M ⊎ R
    aux model     the visual-only twin f^v_t, trained by the loop on the same stream with
                  silent audio (``aux_models``, checkpointed like the learner)
    end_task      MSS: both models score the task's videos, k per new class enter M
                  (not after the last task: nothing would replay that memory)

Every reconstructed choice is a field below (defaults recommended by spec §6); the statistics
live in ``memory.mss`` (eqs 1-5) and ``memory.collision`` (eqs 6-9), the loss is PLOP's.

The visual-only model f^v (spec §6.1 DECISIONs):

* ``visual_model="twin"`` (default, spec §6.1 step 4): a visual-only twin is trained; it is
  the same network fed silence (``problem.apply(..., drop={"audio"})``: the log-mel of a
  silent waveform, ``data.audio.silent_log_mel``; an all-zero log-mel would be a loud
  broadband sound, not the absence of one), declared to the
  loop as an ``AuxModel``. The spec's other realisation, the network without TPAVI, would be
  a different module with another parameter tree; with silent audio TPAVI still runs but
  carries no information about the clip.
  ``"zero_audio"`` (the name kept for existing configs): no second model; s^v is the learner
  itself evaluated with silent audio (the same ``drop``),
  the sample-level modality valuation of Wei et al. (CVPR'24) that the paper cites for eq 5.
  It costs no training and its Δ carries no run-to-run training noise (the two models of
  ``"twin"`` diverge during training even where the audio plays no role);
* ``twin_loss="ce"`` (default): plain cross-entropy over the seen classes on the same stream
  (task videos with the task's labels, replayed videos with their seen labels);
  ``"learner"`` trains it with CMR's own loss (PLOP's pseudo-labels and POD, the teacher also
  fed silent audio);
* DECISION [ours]: it starts each task where the learner starts (the teacher's weights
  f^av_{t-1}, then the same balanced initialisation) and sees the same batches in the same
  order, so the two models differ only in the audio (and the loss, with ``"ce"``) during this
  task, and Δ measures what the audio changed. The alternative reading of "all steps are
  trained only using visual-modal data" [paper], a visual-only model carried through every
  task, would differ from the learner by all past tasks' training as well, so Δ would also
  measure how differently the two remember the old tasks. The chosen twin needs no state
  between tasks: the loop starts it from the checkpointed teacher (``AuxModel.start``) and
  checkpoints it during its training, so a run killed at any point resumes it bitwise.

Memory and PLOP's pseudo-labels (spec §6.1): a replayed clip carries its true labels over the
seen classes and PLOP's background mask is ``y == 0`` on it, so pseudo-labels never
overwrite its old labels (``losses.pseudo_labels.background_mask``).
``memory_pseudo_labels="background"`` (default) lets PLOP relabel its background pixels like
any other clip's; ``"none"`` keeps its labels as they are, with adaptive factor 1;
``"overwrite"`` is the authors' code (``avss/train.py:499``, ``label < old_classes`` on every
clip): the replayed clip's old-class ground truth is replaced by the teacher's pseudo-label,
or 255 where the teacher is unsure.

Outputs (process 0): ``DIR/memory/task_<t>.json`` (MSS, ``mss.selection_record``) for every
task but the last, and, for t >= 1 with CSR on, ``DIR/memory/collisions_<t>.json``
(``collision_record``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from jax_cavs.core import distributed, jsonio
from jax_cavs.problems.cavs import collision
from jax_cavs.problems.cavs import mss
from jax_cavs.core.state import ContinualState
from jax_cavs.core import strategy as base
from jax_cavs.cl.strategies.finetune import Finetune
from jax_cavs.problems.cavs.strategies.mib import begin_balanced
from jax_cavs.problems.cavs.strategies.plop import PLOP

SCORE_CLASSES = ("current", "seen")
VISUAL_MODELS = ("twin", "zero_audio")
TWIN_LOSSES = ("ce", "learner")
MEMORY_PSEUDO_LABELS = ("background", "none", "overwrite")
TWIN = "visual_twin"  # the twin's name in ``TaskContext.aux`` and the checkpoints
# Independent random streams derived from ``ctx.rng``, so that a task resumed after its
# training draws the same MSS selection as an uninterrupted one.
_CSR_STREAM, _MSS_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class VisualTwinCE(Finetune):
    """The visual-only twin's default training: fine-tuning's CE, starting like the learner
    (the balanced initialisation of the new classifiers at t >= 1). Not a selectable method."""

    name = "cmr_visual_twin"
    init_balanced: bool = True

    def begin_task(self, state, task):
        return begin_balanced(super().begin_task(state, task), task, self.init_balanced,
                              self.problem)


@base.register
@dataclasses.dataclass(frozen=True)
class CMR(PLOP):
    """CMR hyper-parameters (PLOP's, inherited, plus the memory's).

    Attributes:
      memory_per_class: k, videos kept per class (5; ablation 3 / 5 / 7); the memory holds
        k x (K - 1) slots.
      selection: MSS rule, ``"mss"`` (smallest |Δ|), ``"smallest"``, ``"largest"``, ``"random"``.
      score_convention: per-frame mIoU of the scores, ``"union"`` or ``"avsbench"``, or the
        authors' code's ``"sum"`` over frames and classes (``mss`` module doc).
      score_classes: classes the scoring argmax runs over, ``"current"`` (background + new)
        or ``"seen"`` (``memory.mss`` module doc).
      visual_model: f^v, a trained ``"twin"`` or the learner with ``"zero_audio"``.
      twin_loss: the visual-only twin's loss, ``"ce"`` or ``"learner"`` (module doc).
      csr: resample the memory by collisions; off, the task replays M once.
      resample_ratio: |R| / |M| (0.2).
      collision_unit: ``"video"``, ``"frame"`` or the authors' code's ``"video_pair"``
        (``collision`` module doc).
      significance: r̄ rule, ``"mean"``, ``"uniform"``, ``"class_mean"`` or ``"fixed"``.
      significance_share: r̄ of ``"fixed"`` (0.7, ``avss/train.py:129``).
      smoothing: ``"sigmoid"`` (eq 9) or ``"standardized"`` (our invention).
      memory_pseudo_labels: ``"background"``, ``"none"`` or ``"overwrite"`` (module doc).
    """

    name = "cmr"

    memory_per_class: int = 5
    selection: str = "mss"
    score_convention: str = "union"
    score_classes: str = "current"
    visual_model: str = "twin"
    twin_loss: str = "ce"
    csr: bool = True
    resample_ratio: float = 0.2
    collision_unit: str = "video"
    significance: str = "mean"
    significance_share: float = collision.AUTHORS_SHARE
    smoothing: str = "sigmoid"
    memory_pseudo_labels: str = "background"

    def __post_init__(self):
        super().__post_init__()
        choices = {"selection": mss.SELECTION_RULES,
                   "score_convention": mss.SCORE_CONVENTIONS,
                   "score_classes": SCORE_CLASSES, "visual_model": VISUAL_MODELS,
                   "twin_loss": TWIN_LOSSES,
                   "collision_unit": collision.COUNTING_UNITS,
                   "significance": collision.SIGNIFICANCE_RULES,
                   "smoothing": collision.SMOOTHINGS,
                   "memory_pseudo_labels": MEMORY_PSEUDO_LABELS}
        for field, valid in choices.items():
            if getattr(self, field) not in valid:
                raise ValueError(f"config field strategy.{field}={getattr(self, field)!r} is "
                                 f"not one of {tuple(valid)}.")
        if self.memory_per_class < 1:
            raise ValueError(f"config field strategy.memory_per_class={self.memory_per_class} "
                             f"must be >= 1 (the paper uses 5; ablation 3 / 5 / 7).")
        if not 0.0 <= self.resample_ratio <= 10.0:
            raise ValueError(f"config field strategy.resample_ratio={self.resample_ratio} must "
                             f"be in [0, 10] (the paper resamples 20%: 0.2).")

    # -- state ------------------------------------------------------------------------------
    def memory_capacity(self, num_classes):
        return self.memory_per_class * (num_classes - 1)

    def init_extras(self, num_classes):
        """PLOP's thresholds plus ``csr_replay`` int32 [n]: this task's draw R (-1 = unused),
        n = the largest possible |R| (at least 1: orbax stores no empty arrays)."""
        slots = collision.resample_count(self.memory_capacity(num_classes), self.resample_ratio)
        return {**super().init_extras(num_classes),
                "csr_replay": jnp.full((max(slots, 1),), -1, jnp.int32)}

    # -- between tasks ----------------------------------------------------------------------
    def prepare_task(self, state, ctx):
        """PLOP's thresholds, then CSR's draw R (none on the first task or with ``csr`` off)."""
        state = super().prepare_task(state, ctx)
        draw = np.zeros((0,), np.int64)
        if self.csr and ctx.task.index > 0 and state.memory.size() > 0:
            draw = self.collision_replay(state, ctx)
        slots = np.full(state.extras["csr_replay"].shape, -1, np.int32)
        slots[:draw.size] = draw
        return state.replace(extras={**state.extras, "csr_replay": jnp.asarray(slots)})

    def collision_replay(self, state: ContinualState, ctx: base.TaskContext) -> np.ndarray:
        """CSR (eqs 6-9): the old model on the new videos -> class probabilities -> R."""
        found = collision.old_model_collisions(
            ctx.problem, state.old_params, state.old_batch_stats, np.asarray(state.old),
            np.asarray(state.current), ctx.batches(ctx.train_indices, labels="current"),
            ctx.device_batch, with_clip_pairs=self.collision_unit == "video_pair")
        stats = collision.collision_statistics(
            found.per_frame, np.asarray(state.old), self.collision_unit, self.significance,
            self.smoothing, found.clip_pairs, self.significance_share)
        class_videos = {int(c): state.memory.ids_of_class(int(c)) for c in stats.classes}
        count = collision.resample_count(state.memory.size(), self.resample_ratio)
        drawn_classes, draw = collision.resample(class_videos, stats.classes,
                                                 stats.probability, count,
                                                 _stream(ctx, _CSR_STREAM))
        write_record(ctx, f"collisions_{ctx.task.index}.json", collision_record(
            ctx.task.index, stats, found.pairs, class_videos, drawn_classes, draw,
            state.memory.size(),
            unit=self.collision_unit, significance=self.significance,
            smoothing=self.smoothing, resample_ratio=self.resample_ratio))
        return draw

    def replay_ids(self, state, ctx):
        """M ⊎ R: every memory video once plus CSR's draw (duplicates allowed)."""
        draw = np.asarray(state.extras["csr_replay"])
        return np.concatenate([state.memory.record_ids(), draw[draw >= 0]]).astype(np.int64)

    def aux_models(self, task):
        """f^v_t, the visual-only twin: from the teacher's weights (the learner's start), on
        this task's stream, with silent audio; none after the last task (``end_task``)."""
        if self.visual_model != "twin" or task.index == task.num_tasks - 1:
            return ()
        strategy = (self if self.twin_loss == "learner"
                    else VisualTwinCE(init_balanced=self.init_balanced, problem=self.problem))
        return (base.AuxModel(TWIN, strategy, drop=frozenset({"audio"}), start="teacher"),)

    def end_task(self, state, ctx):
        """MSS: score the task's videos under the learner and f^v (the twin, or the learner
        with silent audio) and add k videos per new class to the memory. Skipped after the last
        task, whose memory no later task would replay (the results are the same; one twin
        training is saved)."""
        state = super().end_task(state, ctx)
        if ctx.task.index == ctx.task.num_tasks - 1:
            return state
        if self.visual_model == "twin":
            twin = ctx.aux[TWIN]
            visual = (twin.params, twin.batch_stats)
        else:
            visual = (state.params, state.batch_stats)
        classes = np.asarray(ctx.task.seen if self.score_classes == "seen"
                             else ctx.task.current | (np.arange(ctx.task.current.size) == 0))
        scores = mss.score_videos(
            ctx.problem, (state.params, state.batch_stats), visual, classes,
            ctx.batches(ctx.train_indices, labels="current"), ctx.device_batch,
            self.score_convention)
        selection = mss.select(self.selection, scores, ctx.task.classes, self.memory_per_class,
                               _stream(ctx, _MSS_STREAM))
        memory = mss.add_to_memory(state.memory, scores, selection)
        write_record(ctx, f"task_{ctx.task.index}.json", mss.selection_record(
            ctx.task.index, scores, selection, rule=self.selection, k=self.memory_per_class,
            convention=self.score_convention, score_classes=self.score_classes,
            visual_model=self.visual_model, twin_loss=self.twin_loss,
            memory_size=memory.size()))
        return state.replace(memory=memory)

    # -- inside jit -------------------------------------------------------------------------
    def relabel_background(self, state, batch, teacher):
        """PLOP's relabelling; with ``memory_pseudo_labels="none"`` replayed clips keep their
        labels and an adaptive factor of 1, with ``"overwrite"`` they are relabelled as new
        clips are (old classes included)."""
        if self.memory_pseudo_labels == "overwrite":
            batch = {**batch, "is_memory": jnp.zeros_like(batch["is_memory"])}
        labels, kappa = super().relabel_background(state, batch, teacher)
        if self.memory_pseudo_labels == "none":
            memory = batch["is_memory"][:, None]
            labels = jnp.where(memory[..., None, None], batch["labels"], labels)
            kappa = jnp.where(memory, 1.0, kappa)
        return labels, kappa


def _stream(ctx: base.TaskContext, purpose: int) -> np.random.Generator:
    """A generator derived from ``ctx.rng``'s seed and ``purpose``, independent of how many
    numbers other hooks drew from ``ctx.rng`` before."""
    seed = ctx.rng.bit_generator.seed_seq
    return np.random.default_rng(np.random.SeedSequence(
        seed.entropy, spawn_key=tuple(seed.spawn_key) + (purpose,)))


def collision_record(task: int, stats: collision.CollisionStatistics, pairs: np.ndarray,
                     class_videos: dict[int, np.ndarray], drawn_classes: np.ndarray,
                     draw: np.ndarray, memory_size: int, **settings: Any) -> dict[str, Any]:
    """``DIR/memory/collisions_<t>.json``: per old class its collision pixels, significant
    collisions (raw and eq 8's frequency), replay probability (eq 9), memory videos and
    draws; the top (old, new) pairs; r̄, the settings and the draw R itself."""
    classes = {str(int(c)): {"collisions": int(stats.collisions[i]),
                             "significant": int(stats.significant[i]),
                             "frequency": float(stats.frequency[i]),
                             "probability": float(stats.probability[i]),
                             "memory_videos": int(len(class_videos[int(c)])),
                             "draws": int(np.sum(drawn_classes == c))}
               for i, c in enumerate(stats.classes)}
    threshold = stats.threshold if np.isfinite(stats.threshold) else None
    return {"task": int(task), **settings, "threshold": threshold,
            "colliding_units": stats.colliding_units, "memory_size": int(memory_size),
            "replay": [int(i) for i in draw], "classes": classes,
            "top_pairs": collision.top_pairs(pairs)}


def write_record(ctx: base.TaskContext, filename: str, record: dict[str, Any]) -> None:
    """Writes ``record`` to ``ctx.workdir/memory/filename`` atomically (primary process)."""
    if not distributed.is_primary():
        return
    jsonio.write_json_atomic(os.path.join(ctx.workdir, "memory", filename), record)
