"""PLOP, Pseudo-label and LOcal POD (Douillard et al., CVPR 2021), spec_cavs §5.6 and §6.1.

``--method PLOP`` of the reference code [PLOP:argparser.py]: ``pod = "local"``, ``pod_factor =
0.01``, ``pod_logits = True`` with the logits entry weighted 0.0005 (``extra_channels =
"sum"``), ``pseudo = "entropy"`` with ``threshold = 0.001``, ``classif_adaptive_factor =
True``, ``init_balanced = True``; the criterion is plain CE (no UNCE, no output KD). On task
t ≥ 1::

    before training   thresholds[c] = median_thresholds(histogram of the old model's
                      normalised entropy on background pixels of the task data, per pseudo-class)
    every step        y' = y with background pixels relabelled by the old model's argmax where
                      its entropy < thresholds[argmax], and 255 where not
                      κ_f = #(confident background) / #background           per frame f
                      L = mean_pix(κ · CE_seen(z, y')) + POD(old features, new features)

The pieces are methods so that CMR (PLOP's loss + MSS memory + CSR) subclasses this strategy:
``begin_task`` (teacher snapshot + ``mib.init_balanced_classifier``), ``prepare_task``
(``entropy_thresholds`` on ``ctx.train_indices`` only: the spec §6.1 DECISION keeps replayed
clips out of the statistics), ``relabel_background``, ``classification_loss``,
``pod_distillation``.

Replay: a replayed clip (``batch["is_memory"]``) carries its true labels restricted to the seen
classes, so its background mask is ``y == 0`` rather than PLOP's ``y < C_o``: pseudo-labels
never overwrite its true old labels (``losses.pseudo_labels.background_mask``, spec §6.1).

Mapping of POD to the AVS model (spec §5.6(b) DECISIONs; the choice of map is a field):

* stage entries (``pod_stages``): the 4 ResNet stage outputs ``features["backbone"]``
  (default). They are post-ReLU (PLOP distils pre-activation block outputs, which
  ``AVSModel`` does not expose). ``"neck"``: the 4 post-TPAVI neck maps, as the CMR authors'
  code distils (``avss/train.py:622-631``);
* ``pod_pre_logits``: ``"decoder"`` (default) distils D1, the last fused map before the output
  head, like PLOP's DeepLab head output; ``"neck"`` distils the deepest TPAVI-fused map F_3;
* logits entry (``pod_logits``): ``"small"`` (default) ``features["logits_small"]``, the
  model's 2x2 average of the logits (H/2), standing for PLOP's logits before upsampling;
  ``"full"`` the logits at frame resolution, as the CMR authors' code;
* small maps: scales larger than a map's width are dropped for that map (``pod_loss``'s
  ``fit_scales``): the AVS model's stage-4 map is 7 px at 224 (all of 1, 2, 4 apply, as in
  PLOP) but 1-2 px at the 32-64 px of SynthAVS, where PLOP's code would average empty regions;
* the mean over the batch runs over the annotated frames of real clips (padded frames weigh 0).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import jax.numpy as jnp
import numpy as np

from jax_cavs.core import hostpass, xla
from jax_cavs.problems.cavs.losses import pod
from jax_cavs.problems.cavs.losses import pseudo_labels
from jax_cavs.cl import reduce
from jax_cavs.problems.cavs.losses import segmentation
from jax_cavs.core import strategy as base
from jax_cavs.problems.cavs.problem import pixel_weights
from jax_cavs.problems.cavs.strategies.mib import begin_balanced

# The 4 maps distilled as PLOP's stage entries.
POD_STAGES = {
    "backbone": lambda features: features["backbone"],
    "neck": lambda features: features["neck"],
}
# The logits entry: [N*T, h, w, K].
POD_LOGITS = {
    "small": lambda outputs: outputs.features["logits_small"],
    "full": lambda outputs: outputs.logits.reshape(-1, *outputs.logits.shape[2:]),
}
# The map distilled as PLOP's "pre_logits" entry (``AVSModel`` features, [N*T, h, w, c]).
PRE_LOGITS_FEATURES = {
    "decoder": lambda features: features["decoder"],
    "neck": lambda features: features["neck"][-1],
}


@xla.jit
def _batch_histogram(old_logits, batch, old, seen):
    """int32 [K, 100]: one batch of ``entropy_histogram`` (``update_histogram`` from zero)."""
    histogram = jnp.zeros((old.shape[0], pseudo_labels.NUM_BINS), jnp.int32)
    return pseudo_labels.update_histogram(histogram, batch["labels"], old_logits, old, seen,
                                          pixel_mask=pixel_weights(batch))


def entropy_histogram(batches: Iterable[base.Batch], forward: Callable[..., base.Outputs],
                      params, batch_stats, device_batch: Callable[[base.Batch], base.Batch],
                      old, seen) -> np.ndarray:
    """PLOP's ``find_median`` statistics: the old model's entropy histogram over a task's data.

    For every pixel with label 0 on an annotated frame of a real clip, the old model's
    normalised entropy is counted in bin ``min(trunc(100 u), 99)`` of its pseudo-class's row.
    Each batch's int32 histogram (at most 8 x 5 x 224² pixels at AVSBench scale) is summed in
    int64 on the host (``core.hostpass``), so no bin overflows over a task's ~10^9 pixels.

    Args:
      batches: host batches with ``labels`` int32 [B, T, H, W], ``label_mask`` [B, T],
        ``valid`` [B] (``ctx.batches(...)``).
      forward: ``(params, batch_stats, host batch) -> Outputs`` (``ctx.forward``).
      params, batch_stats: the old model.
      device_batch: host batch -> device arrays (``ctx.device_batch``).
      old, seen: bool [K] masks of the task.

    Returns:
      int64 numpy [K, 100].
    """
    old, seen = jnp.asarray(old), jnp.asarray(seen)

    def histogram(batch):
        logits = forward(params, batch_stats, batch).logits
        labels = device_batch({k: batch[k] for k in ("labels", "label_mask", "valid")})
        return {"histogram": _batch_histogram(logits, labels, old, seen)}

    return hostpass.collect(histogram, batches, sums=("histogram",))["histogram"]


@base.register
@dataclasses.dataclass(frozen=True)
class PLOP(base.Strategy):
    """PLOP hyper-parameters (defaults: the reference ``--method PLOP``).

    Attributes:
      pod_factor: λ of the feature entries of Local POD (0.01).
      pod_logits_factor: λ of the logits entry (0.0005, the "after" switch factor).
      pod_scales: Local POD grid sizes (1, 2, 4).
      pod_schedule: multiply POD by sqrt(K_t / |C_t|) (``use_pod_schedule``).
      pod_stages: DECISION, the 4 maps standing for PLOP's stages, a key of ``POD_STAGES``.
      pod_pre_logits: DECISION, the map standing for PLOP's "pre_logits", a key of
        ``PRE_LOGITS_FEATURES``.
      pod_logits: DECISION, the logits entry, a key of ``POD_LOGITS``.
      pseudo_threshold: floor of the per-class entropy thresholds (0.001).
      adaptive_factor: scale each frame's CE by its share of confident background pixels
        (``classif_adaptive_factor``).
      init_balanced: MiB's balanced initialisation of the new classes at each task t ≥ 1.
    """

    name = "plop"
    uses_teacher = True

    pod_factor: float = 0.01
    pod_logits_factor: float = 0.0005
    pod_scales: tuple[int, ...] = (1, 2, 4)
    pod_schedule: bool = True
    pod_stages: str = "backbone"
    pod_pre_logits: str = "decoder"
    pod_logits: str = "small"
    pseudo_threshold: float = pseudo_labels.BASE_THRESHOLD
    adaptive_factor: bool = True
    init_balanced: bool = True

    def __post_init__(self):
        for field, valid in (("pod_stages", POD_STAGES), ("pod_pre_logits", PRE_LOGITS_FEATURES),
                             ("pod_logits", POD_LOGITS)):
            if getattr(self, field) not in valid:
                raise ValueError(f"config field strategy.{field}={getattr(self, field)!r} is "
                                 f"not a known map; valid: {sorted(valid)}.")
        scales = tuple(int(s) for s in self.pod_scales)
        if not scales or min(scales) < 1:
            raise ValueError(f"config field strategy.pod_scales={self.pod_scales!r} must be "
                             f"a non-empty list of positive grid sizes, e.g. (1, 2, 4).")
        object.__setattr__(self, "pod_scales", scales)  # hashable even if given as a list

    def init_extras(self, num_classes):
        return {"thresholds": jnp.full((num_classes,), self.pseudo_threshold, jnp.float32)}

    def begin_task(self, state, task):
        return begin_balanced(super().begin_task(state, task), task, self.init_balanced, self.problem)

    def prepare_task(self, state, ctx):
        if ctx.task.index == 0:
            return state
        thresholds = self.entropy_thresholds(state, ctx)
        return state.replace(extras={**state.extras, "thresholds": jnp.asarray(thresholds)})

    def entropy_thresholds(self, state, ctx) -> np.ndarray:
        """float32 [K] per-class thresholds from the old model on the current task's videos
        (labels of the current classes only, memory excluded): ``find_median``."""
        histogram = entropy_histogram(
            ctx.batches(ctx.train_indices, labels="current"), ctx.forward, state.old_params,
            state.old_batch_stats, ctx.device_batch, state.old, state.seen)
        return pseudo_labels.median_thresholds(histogram, self.pseudo_threshold)

    # -- inside jit ---------------------------------------------------------------------
    def loss(self, state, batch, student, teacher, rng):
        ce = self.classification_loss(state, batch, student, teacher)
        distance = self.pod_distillation(state, batch, student, teacher)
        return ce + distance, {"ce": ce, "pod": distance}

    def relabel_background(self, state, batch, teacher):
        """(labels int32 [N, T, H, W], κ float32 [N, T]): the task labels with background
        relabelled from the teacher and the adaptive factor; unchanged labels and κ = 1 on
        task 0 (and κ = 1 without ``adaptive_factor``)."""
        labels, kappa = pseudo_labels.apply_pseudo_labels(
            batch["labels"], teacher.logits, state.extras["thresholds"], state.old,
            state.seen, batch["is_memory"])
        active = state.task > 0
        labels = jnp.where(active, labels, batch["labels"])
        kappa = jnp.where(active & self.adaptive_factor, kappa, 1.0)
        return labels, kappa

    def classification_loss(self, state, batch, student, teacher):
        """``mean_pix(κ · CE_seen(z, y'))`` over the annotated frames (float32 scalar)."""
        labels, kappa = self.relabel_background(state, batch, teacher)
        ce = segmentation.masked_cross_entropy(student.logits, labels, state.seen)
        return reduce.masked_mean(ce * kappa[..., None, None], self.problem.weights(batch))

    def pod_distillation(self, state, batch, student, teacher):
        """Local POD over the 4 stage maps, the pre-logits map and the logits; 0 on task 0."""
        stages, select = POD_STAGES[self.pod_stages], PRE_LOGITS_FEATURES[self.pod_pre_logits]
        logits = POD_LOGITS[self.pod_logits]

        def maps(features):
            return (*stages(features), select(features))

        distance = pod.pod_loss(
            maps(teacher.features), maps(student.features),
            old_logits=logits(teacher), new_logits=logits(student), old=state.old,
            current=state.current, seen=state.seen, feature_weight=self.pod_factor,
            logits_weight=self.pod_logits_factor, scales=self.pod_scales,
            use_schedule=self.pod_schedule, fit_scales=True,
            sample_weights=self.problem.weights(batch, labelled=False).reshape(-1))
        return jnp.where(state.task > 0, distance, 0.0)
