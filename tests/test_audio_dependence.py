"""The audio-dependence probe (``problems/cavs/audio_dependence.py``): the derangement, the
passes it asks for, the audio substitution of the eval stream, and (``check_run_audio_
dependence``, run by test_resume.py on the shared CLI run) the section a CLI run writes to
metrics.json and the report, recomputed by calling the evaluator directly on batches whose
audio the test substitutes itself."""

from __future__ import annotations

import os
import types

import chex
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import parallel, report, steps
from jax_cavs.data import audio as audio_lib
from jax_cavs.data import sources
from jax_cavs.problems.cavs import audio_dependence, streams
from jax_cavs.problems.cavs import config as config_base
from jax_cavs.problems.cavs.problem import CAVSProblem


def test_other_clip_audio_is_the_next_clips_and_no_clip_keeps_its_own():
    indices = [7, 3, 11, 0, 5]
    mapping = audio_dependence.other_clip_audio(np.asarray(indices))
    assert mapping == {7: 3, 3: 11, 11: 0, 0: 5, 5: 7}
    assert all(mapping[i] != i for i in indices) and sorted(mapping.values()) == sorted(indices)
    assert audio_dependence.other_clip_audio([4]) == {}


def test_measure_scores_each_pass_where_the_section_says():
    """A stand-in ``evaluate`` whose mIoU names the pass it was asked for: every entry of the
    section comes from its own pass (the true score of all clips from the task's evaluation),
    the distractor passes run over the distractor clips only, with the same derangement."""
    calls = []

    def evaluate(indices=None, audio=streams.OWN_AUDIO):
        calls.append((indices, audio))
        name = "silence" if audio == streams.SILENCE else "true" if audio == "own" else "other"
        return {"record": {"miou": {"all": f"{name}@{indices}"}}}

    scores = {"record": {"miou": {"all": "evaluation"}}}
    section = audio_dependence.measure(evaluate, [4, 9, 2], [9], scores)
    assert section == {"true": "evaluation", "silence": "silence@None",
                       "other_clip": "other@None",
                       "distractor_clips": {"true": "true@[9]", "silence": "silence@[9]",
                                            "other_clip": "other@[9]", "num_clips": 1}}
    assert all(audio == {4: 9, 9: 2, 2: 4} for _, audio in calls if isinstance(audio, dict))
    calls.clear()
    assert audio_dependence.measure(evaluate, [4], [], scores)["distractor_clips"] == {
        "true": None, "silence": None, "other_clip": None, "num_clips": 0}
    assert calls == [(None, streams.SILENCE)]  # nothing to derange, no distractor clip


def test_the_probe_is_a_config_switch():
    config = ml_collections.ConfigDict(dict(eval=dict(audio_dependence=False)))
    problem = CAVSProblem(types.SimpleNamespace(num_classes=2), config)
    assert problem.probe_scores(None, None, 0, {}) == {}


def test_eval_clips_carry_silence_or_another_records_audio(tiny_data_dir):
    source = sources.load_dataset("synth_avs", "tiny", tiny_data_dir).sources["test"]
    lut = streams.label_lut(np.ones(9, bool))
    num_frames = np.asarray(source[0]["frames"]).shape[0]

    def fed(audio, index=0):
        decode = streams.DecodeClip(source, 32, False, lut, lut, audio)
        return decode.map((index, False, 1.0))["audio"]

    def log_mel(index):
        waveform = audio_lib.int16_to_float(np.asarray(source[index]["audio"]))
        return audio_lib.log_mel_examples(waveform, num_frames)

    chex.assert_trees_all_equal(fed(streams.OWN_AUDIO), log_mel(0))
    chex.assert_trees_all_equal(fed({0: 3}), log_mel(3))
    chex.assert_trees_all_equal(
        fed(streams.SILENCE), np.full((num_frames, 96, 64), np.log(np.float32(0.01))))
    with pytest.raises(ValueError, match="audio must be"):
        streams.DecodeClip(source, 32, False, lut, lut, "zeros")


def _holds_silent_lookalike(record, pairs) -> bool:
    classes = np.asarray(record["object_classes"])
    sounding = np.asarray(record["object_sounding"], bool)
    heard, silent = set(classes[sounding].tolist()), set(classes[~sounding].tolist())
    return any((a in heard and b in silent) or (b in heard and a in silent) for a, b in pairs)


def check_run_audio_dependence(workdir: str, data_dir: str) -> None:
    """A finished ``configs/finetune.py:runlocal`` run's metrics.json ``audio_dependence``
    (top level = the last task's) equals the evaluator's mIoU of its final learner on the
    test batches with their audio replaced here: log(0.01) for silence, the next test
    clip's log-mel for another clip's, over all test clips and over those with a silent
    look-alike (found from the records); the report shows it. Called by test_resume.py on
    the ``finetune_runlocal`` run (one CLI run for both)."""
    metrics = report.read_json(os.path.join(workdir, "metrics.json"))
    assert metrics["audio_dependence"] == metrics["tasks"][-1]["audio_dependence"]
    config = config_base.base_config("finetune", config_base.parse_arg("runlocal"))
    config.dataset.data_dir = data_dir
    problem = CAVSProblem.from_config(config)
    scenario = problem.scenario(joint=False)
    seen = scenario.seen_mask(scenario.num_tasks - 1)
    # The learner after the last task's training: the one evaluated (fine-tuning's
    # end_task changes nothing).
    with ocp.StandardCheckpointer() as checkpointer:
        learner = types.SimpleNamespace(**checkpointer.restore(
            ckpt_lib.task_model_path(workdir, scenario.num_tasks - 1)))
    # The run's own compiled evaluator update (compiled once, found in the XLA cache).
    update = parallel.jit_eval_step(steps.make_eval_step(problem),
                                    parallel.make_mesh(config.parallel), learner)
    source = problem.dataset.sources["test"]
    num_frames = problem.dataset.num_frames
    indices = [int(i) for i in scenario.test_indices]
    partner = dict(zip(indices, indices[1:] + indices[:1]))
    pairs = problem.dataset.metadata["lookalike_pairs"]
    distractors = [i for i in indices if _holds_silent_lookalike(source[i], pairs)]
    assert distractors

    def silence(_):
        return np.full((num_frames, 96, 64), np.log(np.float32(0.01)), np.float32)

    def partners_audio(index):
        waveform = audio_lib.int16_to_float(np.asarray(source[partner[index]]["audio"]))
        return audio_lib.log_mel_examples(waveform, num_frames)

    def miou(clips, audio=None):
        stats = problem.evaluator.init()
        for batch in problem.eval_batches("test", clips, seen,
                                          batch_size=config.train.eval_batch_size,
                                          worker_count=0, shard_index=0, shard_count=1):
            if audio is not None:
                batch = {**batch, "audio": np.stack([audio(int(i)) for i in batch["index"]])}
            stats = update(learner.params, learner.batch_stats, seen, batch, stats)
        return problem.evaluator.finalize(stats, scenario, seen)["record"]["miou"]["all"]

    def three(clips):
        return {"true": miou(clips), "silence": miou(clips, silence),
                "other_clip": miou(clips, partners_audio)}

    expected = {**three(indices),
                "distractor_clips": {**three(distractors), "num_clips": len(distractors)}}
    chex.assert_trees_all_close(metrics["audio_dependence"], expected)
    with open(os.path.join(workdir, "report", "index.html")) as f:
        page = f.read()
    assert "Audio dependence" in page
    assert f"<td>{100 * expected['distractor_clips']['silence']:.1f}</td>" in page
