"""What a person reads while a run goes (``core.progress``): tasks numbered from 1, a line per
finished task with its scores and where its time went, progress bars that keep their width
however many loss terms a strategy has; and TensorBoard: every scalar at the global optimiser
step in order, the auxiliary models' training (CMR's twin) under their own name. The run is
the hand-made problem of ``test_loop_toy_problem.py`` (two tasks of 2 and 1 optimiser steps)."""

from __future__ import annotations

import dataclasses
import re

from jax_cavs.cl.strategies.finetune import Finetune
from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import loop, progress
from jax_cavs.core.state import initial_state
from jax_cavs.core.strategy import AuxModel
from test_loop_toy_problem import ToyProblem, _config
from test_report import _read_events


def test_the_bar_shows_the_loss_and_three_terms_whatever_their_number():
    values = {"loss": 1.23456, "penalty": 0.0, "grad_norm": 3.0, "ce": 0.5, "pod": 0.0123456,
              "pseudo": 2e-5, "csr": 0.1, "kd": 0.2}
    assert progress.postfix(values) == "loss=1.23 ce=0.5 pod=0.0123 pseudo=2e-05 +2"
    assert progress.postfix({"loss": 0.5, "penalty": 0.0, "grad_norm": 1.0, "ce": 0.5}) == \
        "loss=0.5 ce=0.5"


def test_log_lines_number_tasks_from_one():
    assert progress.task_label(0, 2) == "task 1/2"
    meta = {"task": 1, "phase": "aux", "step": 8, "aux_training": "visual_twin", "aux_done": []}
    assert progress.position(meta, 2, 16) == "task 2/2, visual_twin training step 8 of 16"
    assert progress.position({**meta, "aux_done": ["visual_twin"]}, 2) == \
        "task 2/2, after its training"
    assert progress.position({"task": 2, "phase": "start", "step": 0}, 2) == \
        "the end of the run"
    line = progress.task_summary(0, 2, "miou", {"old": None, "new": 0.2012, "all": 0.2},
                                 {"train": 258.04, "end_task": 0.43, "eval": 3.1,
                                  "total": 261.6})
    assert line == ("task 1/2 done: miou (%) old -, new 20.1, all 20.0; 262 s (train 258 s, "
                    "end of task 0.4 s, eval 3.1 s)")


@dataclasses.dataclass(frozen=True)
class FinetuneWithTwin(Finetune):
    """Fine-tuning with an auxiliary model trained like the learner, as CMR's twin is."""

    def aux_models(self, task):
        return (AuxModel("twin", Finetune(problem=self.problem), start="learner"),)


def test_a_run_logs_one_line_per_task_and_tensorboard_in_step_order(tmp_path, capsys):
    config, problem = _config(), ToyProblem()
    strategy = FinetuneWithTwin(problem=problem)
    experiment = loop.Experiment(config, str(tmp_path), problem, problem.scenario(joint=False),
                                 strategy, initial_state(config, problem, strategy),
                                 ckpt_lib.Checkpointer(str(tmp_path)))
    with experiment:
        experiment.run()
    err = capsys.readouterr().err
    # (tqdm.write clears the bar with "\r" before each line)
    done = re.findall(r"\[jax_cavs\] (task \d/2 done: acc \(%\) all [\d.]+); ", err)
    assert done == ["task 1/2 done: acc (%) all 50.0", "task 2/2 done: acc (%) all 50.0"]

    events = _read_events(str(tmp_path / "tensorboard"))
    steps = {}
    for tag, step, _ in events:
        steps.setdefault(tag, []).append(step)
    # The learner's 2 + 1 optimiser steps; the scores after each task at its last step.
    assert steps["train/loss"] == [1, 2, 3]
    assert steps["acc/all"] == [2, 3]
    # The twin's training (2 steps on the first task's stream, 1 on the second's) on its own
    # step axis, which goes on from task to task although each task's twin starts afresh.
    assert steps["twin/train/loss"] == [1, 2, 3]
    assert "twin/train/learning_rate" not in steps
