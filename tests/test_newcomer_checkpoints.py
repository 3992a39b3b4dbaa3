"""When a run checkpoints (``core.interrupts``): every few minutes by default, every k steps on
request, and right after the current step once a stop signal came; the signals themselves
(first: a request, second: stop at once); the loop taking a time-based checkpoint mid-task on
the hand-made problem of ``test_loop_toy_problem.py``."""

from __future__ import annotations

import json
import os
import signal
import threading

import ml_collections
import pytest

from jax_cavs.core import checkpoint as ckpt_lib
from jax_cavs.core import interrupts, loop
from test_loop_toy_problem import ToyProblem, _config


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def schedule(signals=None, **train):
    clock = Clock()
    return interrupts.SaveSchedule(ml_collections.ConfigDict(train), signals, clock), clock


def test_the_default_saves_every_five_minutes_of_training():
    saves, clock = schedule()  # a config without the fields: the core's defaults
    assert interrupts.DEFAULT_CHECKPOINT_MINUTES == 5.0
    clock.now += 299.0
    assert not saves.due(7)
    clock.now += 1.0
    assert saves.due(8)
    saves.saved()
    clock.now += 299.0
    assert not saves.due(9)


def test_step_and_time_triggers_can_be_set_or_switched_off():
    saves, clock = schedule(checkpoint_every=4, checkpoint_minutes=0)
    clock.now += 1e6
    assert [s for s in range(1, 13) if saves.due(s)] == [4, 8, 12]
    saves, clock = schedule(checkpoint_minutes=0.5)
    clock.now += 30.0
    assert saves.due(1)


def test_a_stop_signal_makes_the_next_step_a_checkpoint_and_the_last():
    signals = interrupts.StopSignals()
    saves, _ = schedule(signals, checkpoint_minutes=0)
    assert not saves.due(3) and not saves.stop_requested()
    signals.received = signal.SIGTERM
    assert saves.due(3) and saves.stop_requested() and saves.signal_number() == signal.SIGTERM
    stop = interrupts.Interrupted(signal.SIGTERM, "task 2/3, its start")
    assert str(stop) == "Interrupted by SIGTERM; checkpoint saved at task 2/3, its start"
    assert stop.exit_code == 143


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="Python handles signals in the main thread only")
def test_signals_request_a_stop_then_stop_at_once(capfd):
    previous = signal.getsignal(signal.SIGINT)
    with interrupts.StopSignals() as signals:
        signals.patient = False  # inside training steps: no message, the stop is next
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGINT
        assert capfd.readouterr().err == ""
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is previous  # restored
    with interrupts.StopSignals() as signals:  # in a phase that cannot stop midway
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
    assert capfd.readouterr().err == (
        "\n[jax_cavs] Stop requested: finishing this phase to checkpoint it (press Ctrl-C "
        "again to stop at once, losing it).\n")


def test_the_loop_takes_time_based_checkpoints_inside_a_task(tmp_path, capsys):
    config = _config()
    config.train.checkpoint_minutes = 1e-9  # due after every step
    with loop.Experiment.create(config, str(tmp_path), ToyProblem()) as experiment:
        experiment.run()
    err = capsys.readouterr().err
    # Task 1's two steps: one checkpoint between them (none after a task's last step: the
    # task's own checkpoint follows); task 2 has a single step.
    assert "[jax_cavs] saved checkpoint 1 (task 1/2, training step 1 of 2)\n" in err
    assert err.count("saved checkpoint") == 1
    with open(tmp_path / "timings.json") as f:
        timings = json.load(f)
    assert sorted(timings) == ["0", "1"]
    assert set(timings["0"]) == {"train", "end_task", "eval", "total"}
    assert ckpt_lib.read_position(str(tmp_path))["task"] == 2
