"""When the loop checkpoints inside a phase, and stopping a run cleanly on SIGINT / SIGTERM.

``SaveSchedule`` decides after every optimiser step whether to write a checkpoint: every
``config.train.checkpoint_minutes`` of wall time (default ``DEFAULT_CHECKPOINT_MINUTES``; 0
disables it), every ``config.train.checkpoint_every`` steps (0: never), and right away once a
stop signal has come. Saving never changes results (the stream position is saved with the
state and a resume is bitwise), so the time-based default only bounds the work a crash loses.

``StopSignals`` (a context around the task loop) turns the first SIGINT or SIGTERM into a
request: the loop finishes its current optimiser step, or the phase it is in where a phase
cannot be checkpointed midway (``end_task``, evaluation), writes a checkpoint and raises
``Interrupted``; the command line prints how to resume and exits with 128 + the signal number
(130 for Ctrl-C). A second signal stops at once (``KeyboardInterrupt``; the last checkpoint
stays intact). A Ctrl-C in a terminal reaches the whole process group, grain's prefetch
workers included; workers that die of it mid-batch print tracebacks and leave shared-memory
blocks behind, so worker processes ignore both signals (the command line makes every process
it spawns do so, ``jax_cavs.main``) and the loop stops them itself (``Experiment.fit`` closes
its stream).

In a multi-process run every process must checkpoint at the same step (orbax saves
collectively), so the time and signal triggers, which differ between processes, are agreed
on (any process asking is enough) every ``config.train.log_every`` steps and at every
checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

DEFAULT_CHECKPOINT_MINUTES = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a stop signal right after writing a checkpoint at ``where``;
    re-running the same command resumes it. ``signum`` is None on a process that stopped
    because another one was signalled."""

    def __init__(self, signum: int | None, where: str):
        self.signum, self.where = signum, where
        name = signal.Signals(signum).name if signum else "a signal to another process"
        super().__init__(f"Interrupted by {name}; checkpoint saved at {where}")

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


class StopSignals:
    """Context: while active, the first SIGINT / SIGTERM sets ``received`` instead of
    stopping the process, a second raises ``KeyboardInterrupt`` (module doc). Outside the
    main thread (where Python cannot handle signals) it does nothing.

    ``patient`` says the loop is in a phase it finishes before it can stop; a signal then
    prints one line saying so (inside training steps the stop comes after the current step).
    """

    def __init__(self):
        self.received: int | None = None
        self.patient = True
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if self.patient:  # os.write: print() is not re-entrant inside a signal handler
            os.write(2, b"\n[jax_cavs] Stop requested: finishing this phase to checkpoint it "
                        b"(press Ctrl-C again to stop at once, losing it).\n")


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on some process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class SaveSchedule:
    """Whether the loop checkpoints after an optimiser step, and whether it stops after a
    checkpoint (module doc). ``train`` is ``config.train``; ``signals`` a ``StopSignals`` (or
    None: no stop requests)."""

    def __init__(self, train, signals: StopSignals | None = None, clock=time.monotonic):
        self.every = int(train.get("checkpoint_every", 0))
        self.seconds = 60.0 * float(train.get("checkpoint_minutes", DEFAULT_CHECKPOINT_MINUTES))
        self.sync_every = max(1, int(train.get("log_every", 1)))
        self.signals, self.clock = signals, clock
        self.last = clock()

    def saved(self) -> None:
        """Restarts the time trigger (called after every checkpoint)."""
        self.last = self.clock()

    def _signalled(self) -> bool:
        return self.signals is not None and self.signals.received is not None

    def due(self, step: int) -> bool:
        """After optimiser step ``step`` (1-based) of a phase: checkpoint now?"""
        if self.every and step % self.every == 0:
            return True
        if jax.process_count() > 1 and step % self.sync_every:
            return False
        timed = self.seconds > 0 and self.clock() - self.last >= self.seconds
        return _any_process(timed or self._signalled())

    def stop_requested(self) -> bool:
        """After a checkpoint: has a stop signal come (to any process)?"""
        return _any_process(self._signalled())

    def signal_number(self) -> int | None:
        return self.signals.received if self.signals is not None else None
