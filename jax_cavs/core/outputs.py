"""What the loop writes for a person after each task, and what it shows for a finished run.

After task t: the problem's probes (``probe_scores``), ``metrics.json``, the headline scores
in TensorBoard (at the global optimiser step, the training scalars' axis), ``timings.json``
(``{"<t>": {"train": s, "end_task": s, "eval": s, "total": s}}``, ``progress.Timings``) and
the report (``core.report`` with the problem's panels). A rerun on a finished workdir reads
``metrics.json`` and writes nothing.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from jax_cavs.core import jsonio, progress, report
from jax_cavs.core.state import ContinualState


def probe_scores(experiment, state: ContinualState, t: int, scores: dict[str, Any]
                 ) -> dict[str, Any]:
    """The problem's probes of the learner after task ``t`` (``Problem.probe_scores``,
    optional; {} without), on the compiled evaluation of ``experiment.evaluate``."""
    probe = getattr(experiment.problem, "probe_scores", None)
    if probe is None:
        return {}
    return probe(lambda indices=None, **options: experiment.evaluate(
        state, t, indices=indices, **options), experiment.scenario, t, scores)


def report_inputs(experiment, state: ContinualState, t: int) -> dict[str, Any]:
    """The problem's report inputs after task ``t`` (runs the model: every process)."""
    return experiment.problem.report_inputs(
        experiment.forward, state, experiment.scenario, t,
        lambda i, m: experiment.batches(i, m, "test", whole=True))


def write(experiment, state: ContinualState, meta: dict[str, Any], t: int,
          seconds: dict[str, float], panels: dict[str, Any]) -> None:
    """After task ``t``: metrics.json, TensorBoard scores, timings and the report."""
    experiment.write_metrics(meta)
    if jax.process_index() != 0:
        return
    workdir, headline = experiment.workdir, experiment.problem.evaluator.headline
    experiment.scalars(int(state.step), {f"{headline}/{k}": v
                                         for k, v in meta["tasks"][-1][headline].items()})
    jsonio.update_json_atomic(os.path.join(workdir, "timings.json"), str(t), seconds)
    report.write_report(workdir, experiment.problem.report_panels(workdir, **panels))


def report_complete(experiment) -> dict[str, Any]:
    """A finished workdir: its results table and where they are; nothing is written."""
    workdir = experiment.workdir
    metrics = report.read_json(os.path.join(workdir, "metrics.json"))
    if jax.process_index() == 0:
        report.print_summary(metrics, metrics["headline"])
        num = experiment.scenario.num_tasks
        progress.log(f"The run in {workdir} is complete ({num} of {num} tasks); nothing to "
                     f"do. Its report: {os.path.join(workdir, 'report', 'index.html')}.")
    return metrics
