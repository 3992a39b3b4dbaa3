"""Exact resume: a run killed with SIGKILL at several points, and once stopped with a SIGINT
(which checkpoints where it comes, ``core.interrupts``), and resumed ends bitwise equal to an
uninterrupted run (metrics.json and final parameters), on CPU."""

from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from conftest import finetune_runlocal_command
from test_audio_dependence import check_run_audio_dependence
from jax_cavs.core import checkpoint as ckpt_lib

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(workdir: str, data_dir: str) -> list[str]:
    return finetune_runlocal_command(workdir, data_dir, "--config.train.checkpoint_every=4")


def run_until(cmd: list[str], pattern: str | None, timeout: float = 600,
              sig: int = signal.SIGKILL) -> str:
    """Runs ``cmd`` in a process group of its own; sends ``sig`` to the group (as a terminal
    sends Ctrl-C) as soon as its stderr matches ``pattern`` (None: let it end).

    Returns the stderr text seen. Asserts a signalled run was stopped by it before finishing
    (a SIGINT/SIGTERM ends a run with status 128 + the signal, ``jax_cavs.main``).
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    seen = []
    killed = threading.Event()

    def reader():
        # Large reads and a search over the recent text only: a reader that falls behind
        # (re-joining everything per small chunk is quadratic) sees the pattern after the
        # run has already finished.
        window, decoder = "", codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            data = os.read(proc.stderr.fileno(), 1 << 16)
            if not data:
                return
            chunk = decoder.decode(data)
            seen.append(chunk)
            window += chunk  # the previous tail (a match may straddle reads) + the new text
            if pattern and not killed.is_set() and re.search(pattern, window):
                os.killpg(proc.pid, sig)
                killed.set()
            window = window[-4096:]

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        raise AssertionError(f"timed out: {' '.join(cmd)}")
    thread.join(timeout=60)
    text = "".join(seen)
    if pattern:
        status = -sig if sig == signal.SIGKILL else 128 + sig
        assert killed.is_set() and proc.returncode == status, text[-2000:]
    else:
        assert proc.returncode == 0, text[-3000:]
    return text


def final_params(workdir: str):
    checkpointer = ckpt_lib.Checkpointer(workdir)
    params = checkpointer.restore_raw()["state"]["params"]
    checkpointer.close()
    return params


def check_report(workdir: str) -> None:
    """The report a run writes opens: every image index.html references exists, is a PNG of
    the size the report draws it at (inches x 100 dpi, as in test_report.py; overlays: one
    260-pixel row for the old and one for the new classes after the last task), not blank."""
    from PIL import Image

    index = os.path.join(workdir, "report", "index.html")
    with open(index) as f:
        images = re.findall(r'<img src="([^"]+)"', f.read())
    expected = {"accuracy_matrix.png": (600, 500), "miou_per_task.png": (700, 400),
                "overlays.png": (900, 520)}
    assert {"accuracy_matrix.png", "miou_per_task.png", "per_class_iou.png",
            "overlays.png"} <= set(images)
    for name in images:
        with Image.open(os.path.join(workdir, "report", name)) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("L"), np.float32)
        assert pixels.std() > 0, name
        if name in expected:
            assert image.size == expected[name], name


def test_killed_and_resumed_run_is_bitwise_identical(tmp_path, tiny_data_dir,
                                                     finetune_runlocal):
    reference = finetune_runlocal  # the same run, checkpointed only at task ends
    check_report(reference)
    check_run_audio_dependence(reference, tiny_data_dir)

    resumed = str(tmp_path / "resumed")
    cmd = command(resumed, tiny_data_dir)
    # Ctrl-C in the first task's training: the run checkpoints the step it is at (not only
    # at the every-4-steps checkpoints) and says how to resume.
    text = run_until(cmd, r"task 1/2 train:\s+\d+%\|[^|]*\|\s*[3-7]/", sig=signal.SIGINT)
    (step,) = re.findall(r"Interrupted by SIGINT; checkpoint saved at task 1/2, training "
                         r"step (\d+) of 42\. Resume with: ", text)
    # Inside a task: past the next checkpoint, in the middle of the first task's training.
    text = run_until(cmd, r"task 1/2 train:\s+\d+%\|[^|]*\|\s*(9|1[0-9])/")
    assert f"Resuming {resumed} at task 1/2, training step {step} of 42." in text
    # During the evaluation of the first task.
    run_until(cmd, r"task 1/2 eval")
    # Inside the second task's training (right after its step-4 checkpoint: a fast CPU's
    # progress bar may skip any given step number).
    run_until(cmd, r"\(task 2/2, training step 4 of ")
    text = run_until(cmd, None)
    assert "Resuming" in text

    with open(os.path.join(reference, "metrics.json"), "rb") as f:
        expected = f.read()
    with open(os.path.join(resumed, "metrics.json"), "rb") as f:
        assert f.read() == expected
    got, want = final_params(resumed), final_params(reference)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


# Kill points of the strategies with state beyond the learner: PLOP's thresholds (computed
# by prepare_task of task 2, in the checkpoint), CMR's visual twin (an auxiliary model with its
# own mid-training checkpoints) and CSR draw, EWC's importance and anchor (end_task of task 1).
# Each kill follows a mid-task checkpoint line (progress bars skip step numbers on a fast
# CPU), so the resume restores that state. PLOP's and EWC's first task is fine-tuning's,
# whose kills the test above covers.
KILLS = {
    "plop": [r"\(task 2/2, training step 4 of "],
    "cmr": [r"\(task 1/2, training step 8 of ", r"\(task 1/2, visual_twin training step 8 of ",
            r"\(task 2/2, training step 4 of "],
    "ewc": [r"\(task 2/2, training step 4 of "],
}


@pytest.mark.parametrize("method", sorted(KILLS))
def test_strategies_with_state_resume_bitwise_after_sigkill(method, tmp_path, tiny_data_dir):
    def cmd(workdir):
        return [sys.executable, "-m", "jax_cavs.main", "--config", f"configs/{method}.py:runlocal",
                "--workdir", workdir, f"--config.dataset.data_dir={tiny_data_dir}",
                "--config.train.checkpoint_every=4", "--config.train.epochs=1"]

    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    run_until(cmd(reference), None)
    for pattern in KILLS[method]:
        run_until(cmd(resumed), pattern)
    assert "Resuming" in run_until(cmd(resumed), None)
    for name in ("metrics.json", *(["memory/task_0.json", "memory/collisions_1.json"]
                                   if method == "cmr" else [])):
        with open(os.path.join(reference, name), "rb") as f:
            expected = f.read()
        with open(os.path.join(resumed, name), "rb") as f:
            assert f.read() == expected, name
    jax.tree_util.tree_map(np.testing.assert_array_equal, final_params(resumed),
                           final_params(reference))
