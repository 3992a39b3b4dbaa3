"""What a rerun does to a workdir, on the hand-made problem of ``test_loop_toy_problem.py``
(two tasks of 2 and 1 optimiser steps): a finished run is reported and left untouched (no
file written, no TensorBoard event file added), a config change is refused on it, and a run
stopped mid-task and continued under a changed config (``--allow_config_change``) records
every config it was trained under, with where each took effect, in ``config.json``."""

from __future__ import annotations

import json
import os
import signal

import pytest

from jax_cavs.core import guards, interrupts, loop
from test_loop_toy_problem import ToyProblem, _Iterator, _config


def snapshot(workdir: str) -> dict[str, tuple[int, int]]:
    """(mtime in ns, size) of every file and directory under ``workdir``."""
    found = {}
    for root, dirs, files in os.walk(workdir):
        for name in dirs + files:
            stat = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), workdir)] = (stat.st_mtime_ns,
                                                                         stat.st_size)
    return found


def run(config, workdir, problem=None, allow_config_change=False) -> dict:
    with loop.Experiment.create(config, str(workdir), problem or ToyProblem(),
                                allow_config_change) as experiment:
        return experiment.run()


def test_a_finished_run_is_reported_and_left_untouched(tmp_path, capsys):
    metrics = run(_config(), tmp_path)
    before = snapshot(str(tmp_path))
    assert [p for p in before if p.startswith("tensorboard" + os.sep)] != []
    capsys.readouterr()

    with loop.Experiment.create(_config(), str(tmp_path), ToyProblem()) as experiment:
        assert experiment.complete
        assert experiment.run() == json.loads(json.dumps(metrics))
    out, err = capsys.readouterr()
    assert (f"[jax_cavs] The run in {tmp_path} is complete (2 of 2 tasks); nothing to do. "
            f"Its report: {tmp_path / 'report' / 'index.html'}.") in err
    assert "Resuming" not in err and "   1 |  50.0" in out  # the results, tasks from 1
    assert snapshot(str(tmp_path)) == before  # no config.json rewrite, no new event file


def test_a_config_change_is_refused_on_a_finished_run(tmp_path):
    run(_config(), tmp_path)
    with open(tmp_path / "config.json", "rb") as f:
        saved = f.read()
    changed = _config()
    changed.optimizer.lr = 0.05
    with pytest.raises(guards.ConfigMismatch) as error:
        loop.Experiment.create(changed, str(tmp_path), ToyProblem(), allow_config_change=True)
    assert str(error.value) == (
        f"{tmp_path} holds a finished run (results in {tmp_path / 'metrics.json'}) trained "
        "under another config (optimizer.lr: 0.1 -> 0.05); nothing was changed. Use another "
        "--workdir for this config.")
    with open(tmp_path / "config.json", "rb") as f:
        assert f.read() == saved


class StoppedProblem(ToyProblem):
    """The toy problem whose first training stream asks the run to stop (as a SIGINT does)
    when its first batch is taken."""

    experiment = None

    def train_stream(self, items, task, **kwargs):
        stream = super().train_stream(items, task, **kwargs)
        problem = self

        class Stopping(_Iterator):
            def __next__(self):
                if problem.experiment is not None:
                    problem.experiment.saves.signals.received = signal.SIGINT
                    problem.experiment = None
                return super().__next__()

        return Stopping(stream.batches)


def test_a_config_change_mid_run_is_recorded_with_where_it_took_effect(tmp_path):
    problem = StoppedProblem()
    with loop.Experiment.create(_config(), str(tmp_path), problem) as experiment:
        problem.experiment = experiment
        with pytest.raises(interrupts.Interrupted) as stop:
            experiment.run()
    assert str(stop.value) == ("Interrupted by SIGINT; checkpoint saved at task 1/2, "
                               "training step 1 of 2")
    assert stop.value.exit_code == 130
    with open(tmp_path / "config.json") as f:
        first = json.load(f)

    changed = _config()
    changed.optimizer.lr = 0.05
    with pytest.raises(guards.ConfigMismatch, match=r"optimizer\.lr: 0\.1 -> 0\.05\. Use "
                                                   r"another --workdir, or pass "
                                                   r"--allow_config_change"):
        loop.Experiment.create(changed, str(tmp_path), ToyProblem())
    changed.train.checkpoint_every = 5  # how often a run saves is not a change of config
    run(changed, tmp_path, allow_config_change=True)

    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    history = written.pop("config_history")
    assert written == json.loads(changed.to_json())
    assert history == [
        {"task": 0, "phase": "start", "step": 0, "config": first},
        {"task": 0, "phase": "train", "step": 1, "changes": ["optimizer.lr: 0.1 -> 0.05"],
         "config": written}]
    # The run is finished under the recorded history; a rerun leaves it as it is.
    run(changed, tmp_path)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["config_history"] == history
