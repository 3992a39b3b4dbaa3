"""How much a CAVS learner's predictions depend on the sound: the audio-dependence probe.

After every task the test mIoU over every seen class (the evaluator's ``miou.all``) is
measured with three inputs (metrics.json's ``audio_dependence``, in ``tasks[t]`` and, for
the latest task, at the top level; ``report.audio_dependence_section`` shows it):

* ``true``: each clip's own audio (the task's evaluation itself, not run again);
* ``silence``: the log-mel of a silent waveform (``data.audio.silent_log_mel``; an all-zero
  log-mel would be a loud broadband sound, not silence);
* ``other_clip``: another test clip's audio, by a fixed derangement of the evaluated test
  records in the scenario's order: clip i gets the audio of clip (i + 1) mod N, so no clip
  keeps its own (None when N < 2);

and the same three over ``distractor_clips``, the test clips that hold a silent look-alike
distractor: a drawn object that does not sound whose class is the look-alike partner of a
class sounding in the clip (SynthAVS records ``object_classes`` / ``object_sounding``, its
metadata ``lookalike_pairs``). There only the audio tells which of the two objects to
segment. Each clip keeps its derangement partner's audio there too. ``num_clips`` counts
them; with none (or a dataset that does not record distractors, as AVSBench) the three
scores are None.

A model that ignores the sound scores the same three times; one that uses it loses with
silence and with another clip's audio, most on the distractor clips. The passes reuse the
compiled evaluation (same batch shapes: the audio is substituted when the batches are
decoded): two over the test set and three over the distractor clips, per task.
``config.eval.audio_dependence = False`` turns the probe off.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jax_cavs.problems.cavs.streams import SILENCE

VARIANTS = ("true", "silence", "other_clip")


def other_clip_audio(indices: Sequence[int]) -> dict[int, int]:
    """{record: the record whose audio it gets}: clip i of ``indices`` takes clip
    (i + 1) mod N's audio; {} when N < 2 (no derangement exists)."""
    indices = [int(i) for i in indices]
    if len(indices) < 2:
        return {}
    return {i: indices[(k + 1) % len(indices)] for k, i in enumerate(indices)}


def silent_lookalike_clips(source: Sequence[Mapping[str, Any]], indices: Sequence[int],
                           lookalike_pairs: Sequence[Sequence[int]]) -> list[int]:
    """The records of ``indices`` holding a silent look-alike distractor (module doc), in
    order; [] without look-alike pairs (the records are then not read)."""
    partners: dict[int, set[int]] = {}
    for a, b in lookalike_pairs:
        partners.setdefault(int(a), set()).add(int(b))
        partners.setdefault(int(b), set()).add(int(a))
    if not partners:
        return []
    found = []
    for i in indices:
        record = source[int(i)]
        classes = np.asarray(record["object_classes"])
        sounding = np.asarray(record["object_sounding"], bool)
        heard = set(classes[sounding].tolist())
        if any(partners.get(int(c), set()) & heard for c in classes[~sounding]):
            found.append(int(i))
    return found


def measure(evaluate: Callable[..., dict[str, Any]], indices: Sequence[int],
            distractors: Sequence[int], scores: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's ``audio_dependence`` (module doc).

    Args:
      evaluate: ``evaluate(indices=None, audio=...)``, the compiled evaluation over test
        records ``indices`` (None: all of the scenario's) with the audio substituted
        (``streams.DecodeClip``); returns ``Evaluator.finalize``'s result.
      indices: the scenario's test records (the derangement runs over them).
      distractors: the records of ``indices`` holding a silent look-alike distractor.
      scores: the task's own evaluation (the true-audio score of the whole test set).
    """
    others = other_clip_audio(indices)

    def miou(result: dict[str, Any]) -> float | None:
        return result["record"]["miou"]["all"]

    def three(subset: list[int] | None, true: dict[str, Any]) -> dict[str, float | None]:
        return {"true": miou(true),
                "silence": miou(evaluate(indices=subset, audio=SILENCE)),
                "other_clip": miou(evaluate(indices=subset, audio=others)) if others else None}

    subset = [int(i) for i in distractors]
    on_distractors = (three(subset, evaluate(indices=subset)) if subset
                      else dict.fromkeys(VARIANTS))
    return {**three(None, scores),
            "distractor_clips": {**on_distractors, "num_clips": len(subset)}}
