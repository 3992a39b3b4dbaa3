"""Ctrl-C with grain's prefetch worker processes, which a terminal's SIGINT reaches too (it is
sent to the whole process group): the run stops after the current training step with a
checkpoint, prints one line giving the exact command that resumes it, exits with status 130,
and leaves no traceback (of the run or of a worker) and no shared memory behind. That the
printed command resumes at that step and ends bit for bit where an uninterrupted run ends is
``test_resume.py``'s (its SIGINT stop)."""

from __future__ import annotations

import glob
import os
import re
import shlex
import signal
import time

import pytest

from conftest import finetune_runlocal_command
from test_resume import run_until

pytestmark = pytest.mark.slow

INTERRUPTED = (r"^\[jax_cavs\] Interrupted by SIGINT; checkpoint saved at task 1/2, training "
               r"step \d+ of 42\. Resume with: (.+)$")


def shared_memory() -> set[str]:
    return set(glob.glob("/dev/shm/psm_*"))


def left_behind(before: set[str]) -> set[str]:
    """Shared-memory blocks created since ``before`` that stay (another test process's
    in-flight blocks come and go)."""
    new = shared_memory() - before
    if new:
        time.sleep(2)
    return new & shared_memory()


def test_sigint_with_grain_workers_stops_cleanly(tmp_path, tiny_data_dir):
    workdir = str(tmp_path / "run")
    # One worker process (runlocal reads in-process by default).
    cmd = finetune_runlocal_command(workdir, tiny_data_dir, "--config.train.worker_count=1")
    before = shared_memory()
    text = run_until(cmd, r"task 1/2 train:\s+\d+%\|[^|]*\|\s*[3-9]/", sig=signal.SIGINT)

    (command,) = re.findall(INTERRUPTED, text, re.MULTILINE)  # one line says how to resume
    assert command == shlex.join(["python", "-m", "jax_cavs.main", *cmd[3:]])
    for noise in ("Traceback", "KeyboardInterrupt", "leaked shared_memory", "saved checkpoint"):
        assert noise not in text, noise
    assert left_behind(before) == set()
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))  # stopped in task 1
