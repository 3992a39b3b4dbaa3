"""CMR's MSS and CSR (spec_cavs §6) against the generator's truth.

The unit tests of every CSR step and of the MSS scores and selection rules, on tiny hand-made
masks, are in test_cmr_collisions.py and test_cmr_selection.py; the strategy's glue, its config
and the jit'd passes in test_cmr_strategy.py. The tolerances below are shared by all four.

The two SynthAVS tests use the generator's ground truth (``SynthAVSGenerator.plan``):

* **MSS avoids low-consistency clips.** The predictions are simulated from what each clip
  physically contains, never from its consistency value: the audio-visual "model" labels a
  visible object in a frame when its class's sound is in that frame's audio (emitted, at an
  audible SNR); the visual-only "model" labels every visible object, sounding or silent. Clips
  whose audio disagrees with the labels (late onset, early offset, mismatched sound, weak
  SNR) are then exactly those where audio changes the segmentation for the worse, the
  situation MSS is meant to screen out. What is tested is the selection rule and its
  scoring code: per-frame mIoU -> per-video score -> Δ -> ranking by |Δ|. The test checks
  that MSS keeps clearly fewer low-consistency clips than random selection (averaged over
  seeds) and that the signed "smallest" rule, which prefers Δ < 0, keeps more: the sign
  convention of eq 5 matters. Whether a *trained* model behaves like the simulation is
  measured by the benchmark (benchmarks/cmr_ablation.py), not here.
* **CSR finds a planted confusion.** On generator clips, a simulated old model mistakes one
  new class for one old class on most of its pixels (a systematic co-occurrence confusion)
  while spreading more collision pixels in total over another old class as a minority in
  every video. CSR must rank the planted class first in frequency and probability, although
  the other class has the most raw collision pixels: the ratio test of eqs 6-8 is what finds
  it.

Tolerances: the scores are means of a few float32 ratios of small integers (rtol 1e-6); the
CSR statistics are float64 numpy (rtol 1e-12); the resampling frequencies are binomial, so
the tolerance is 5 standard deviations of the class share.
"""

import functools

import numpy as np
import pytest

from data_pipelines.synth_avs_config import SynthAVSConfig
from data_pipelines.synth_avs_scenes import (FULL_CONSISTENCY_SNR_DB, ZERO_CONSISTENCY_SNR_DB,
                                             SynthAVSGenerator)
from jax_cavs.problems.cavs import collision
from jax_cavs.problems.cavs import mss

RTOL_F32 = 1e-6
RTOL_F64 = 1e-12


# -- SynthAVS ground truth ----------------------------------------------------------------------

CONFIG = SynthAVSConfig(name="cmr_test", num_classes=8, num_communities=2, image_size=32,
                        num_frames=5, train_clips_per_class=16, test_clips_per_class=1)
K = CONFIG.num_classes + 1


@pytest.fixture(scope="module")
def plans():
    generator = SynthAVSGenerator.from_config(CONFIG)
    return [generator.plan("train", i) for i in range(CONFIG.num_clips("train"))]


def _simulated_predictions(plan):
    """(audio-visual, visual-only) predictions int32 [T, H, W] from the clip's content.

    Audio-visual: a visible object is labelled in a frame when its class's sound is in that
    frame's audio at an audible SNR (>= 0 dB, half-way on the generator's audibility scale).
    Visual-only: every visible object is labelled, sounding or not.
    """
    audible = ((plan.snr_db - ZERO_CONSISTENCY_SNR_DB)
               / (FULL_CONSISTENCY_SNR_DB - ZERO_CONSISTENCY_SNR_DB)) >= 0.5
    heard = np.zeros((CONFIG.num_frames, K), bool)
    for obj in plan.objects:
        if obj.sounding and audible:
            heard[obj.emitted, obj.emitted_class] = True
    av = np.zeros(plan.top.shape, np.int32)
    v = np.zeros(plan.top.shape, np.int32)
    for o, obj in enumerate(plan.objects):
        visible = (plan.top == o) & plan.frame_mask[:, None, None]
        v[visible] = obj.class_id
        av[visible & heard[:, obj.class_id][:, None, None]] = obj.class_id
    return av, v


def _frame_weights(plans):
    return np.stack([p.label_mask & p.frame_mask for p in plans]).astype(np.float32)


def test_mss_selects_fewer_low_consistency_clips_than_random(plans):
    labels = np.stack([p.labels() for p in plans]).astype(np.int32)
    weights = _frame_weights(plans)
    av, v = (np.stack(x) for x in zip(*map(_simulated_predictions, plans)))
    score = functools.partial(mss.video_scores, num_classes=K)
    scores = mss.VideoScores(
        ids=np.arange(len(plans)), av=np.asarray(score(av, labels, weights), np.float64),
        v=np.asarray(score(v, labels, weights), np.float64),
        presence=np.asarray(mss.class_presence(labels, weights, K)))
    low = np.array([p.consistency() < 1.0 for p in plans])
    assert 0.1 < low.mean() < 0.3  # low_consistency_share = 0.2 of the train clips

    def low_share(rule, rng=None):
        chosen = mss.select(rule, scores, range(1, K), 5, rng)
        return low[np.unique(np.concatenate(list(chosen.values())))].mean()

    random_share = np.mean([low_share("random", np.random.default_rng(s)) for s in range(40)])
    assert abs(random_share - low.mean()) < 0.05  # random keeps the base rate
    assert low_share("mss") < 0.5 * random_share
    assert low_share("smallest") > random_share


def test_csr_ranks_a_planted_confusion_first(plans):
    old_classes, new_classes, planted_old, planted_new, spread_old = (1, 2, 3, 4), \
        (5, 6, 7, 8), 2, 6, 3
    old = np.zeros(K, bool)
    old[[0, *old_classes]] = True
    current = np.zeros(K, bool)
    current[list(new_classes)] = True
    task = [p for p in plans if set(p.classes()) & set(new_classes)]
    labels = np.stack([p.labels() for p in task]).astype(np.int32)
    labels = np.where(current[labels], labels, 0)  # the task's labels: new classes only
    rng = np.random.default_rng(0)
    pred = np.zeros_like(labels)
    for i in range(len(task)):
        # Per video, a random third old class takes part of the non-planted collisions.
        other = rng.choice([c for c in old_classes if c not in (planted_old, spread_old)])
        raster = np.arange(labels[i].size).reshape(labels[i].shape) % 10
        planted = labels[i] == planted_new
        rest = current[labels[i]] & ~planted
        pred[i][planted] = np.where(raster[planted] < 8, planted_old, spread_old)
        pred[i][rest] = np.select([raster[rest] < 4, raster[rest] < 7], [spread_old, other], 0)
    per_frame, pairs = collision.collision_counts(pred, labels, old, current,
                                                  _frame_weights(task), K)
    stats = collision.collision_statistics(np.asarray(per_frame), old)
    by_class = dict(zip(stats.classes.tolist(), range(len(stats.classes))))
    assert np.argmax(stats.collisions) == by_class[spread_old]  # most raw pixels
    assert np.argmax(stats.frequency) == by_class[planted_old]
    assert np.argmax(stats.probability) == by_class[planted_old]
    assert stats.probability[by_class[planted_old]] > stats.probability.min()
    np.testing.assert_allclose(stats.probability.sum(), 1.0, rtol=RTOL_F64)
    assert collision.top_pairs(np.asarray(pairs), 1)[0]["old"] in (planted_old, spread_old)
