"""Every continual method on the same SynthAVS scenario, overlapped and disjoint: one table.

  python benchmarks/compare_methods.py                      # full size, all methods, both modes
  python benchmarks/compare_methods.py --runlocal --methods finetune,ewc,replay \\
      --override dataset.data_dir=/tmp/jcdata --root /tmp/compare

Each (mode, method) run is ``python -m jax_cavs.main --config configs/<method>.py[:runlocal]
--config.scenario.mode=<mode>`` in its own workdir ``<root>/<mode>/<method>`` (output in
``run.log`` there), one after the other. The methods whose first task is plain cross-entropy
(all but LwF-MC, SI and joint training) reuse fine-tuning's trained first task
(``--config.first_task_from=<root>/<mode>/finetune``, MiB/PLOP's ``--step_ckpt``): every
method then starts its second task from the same model, and the comparison costs one first
task instead of ten (``--no_share_first_task`` trains it in every run). The script is resumable: a finished run (its
``metrics.json`` covers every class of the scenario) is not run again, and an unfinished one
resumes from its last checkpoint. A method whose config file does not exist yet is skipped
with a note; a run that fails is reported as such and the others go on.

The table gives, per mode, old / new / all mIoU (%) after the last task (old = background +
the first task's classes, new = every later class, the CMR tables' columns) and the CL summary
of the per-task accuracy matrix (average accuracy, forgetting, backward transfer; undefined
for joint training, which has a single task). It is written to ``--out`` (default
``<root>/comparison.md``), printed, and with ``--readme`` put between the markers
``<!-- compare_methods:begin -->`` / ``<!-- compare_methods:end -->`` of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("finetune", "joint", "lwf", "lwf_mc", "ilt", "mib", "plop", "ewc", "si", "mas",
           "replay", "cmr")
MODES = ("overlapped", "disjoint")
FIRST_TASK_SOURCE = "finetune"  # the run whose trained first task the others reuse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runlocal", action="store_true",
                        help="the configs' runlocal variant (tiny data, small model)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated methods (configs/<method>.py)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated scenario modes")
    parser.add_argument("--root", default=None,
                        help="directory of the runs (default workdirs/synthavs[_runlocal], "
                             "shared with cmr_ablation.py)")
    parser.add_argument("--out", default=None,
                        help="markdown table (default <root>/comparison.md)")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="extra config override for every run, e.g. "
                             "dataset.data_dir=/tmp/data (repeatable)")
    parser.add_argument("--readme", default=None,
                        help="also write the table between the compare_methods markers of "
                             "this file (e.g. README.md)")
    parser.add_argument("--no_run", action="store_true",
                        help="start no run: tabulate the runs finished so far")
    parser.add_argument("--no_share_first_task", dest="share_first_task",
                        action="store_false",
                        help="train the first task in every run instead of reusing "
                             "fine-tuning's")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    bad_modes = sorted(set(args.modes) - set(MODES))
    if bad_modes:
        parser.error(f"--modes: unknown {bad_modes}; valid: {', '.join(MODES)}")
    for override in args.override:
        if "=" not in override:
            parser.error(f"--override {override!r} must be FIELD=VALUE")
    args.root = args.root or os.path.join(
        "workdirs", "synthavs_runlocal" if args.runlocal else "synthavs")
    args.out = args.out or os.path.join(args.root, "comparison.md")
    return args


def reuses_first_task(method: str) -> bool:
    """True when ``method`` trains its first task as ``FIRST_TASK_SOURCE`` does."""
    from jax_cavs.problems.cavs import strategies  # jax import, only when runs are started

    objective = strategies.strategy_class(FIRST_TASK_SOURCE).first_task_objective
    return (method != FIRST_TASK_SOURCE
            and strategies.strategy_class(method).first_task_objective == objective)


def config_path(method: str) -> str:
    return os.path.join(REPO, "configs", f"{method}.py")


def read_metrics(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_finished(metrics: dict[str, Any] | None) -> bool:
    """True when the tasks of ``metrics`` cover every class of its scenario's report groups
    (continual runs: all tasks done; joint training: its single task done)."""
    if not metrics or not metrics.get("tasks"):
        return False
    learned = {c for task in metrics["tasks"] for c in task["classes"]}
    return learned >= {c for group in metrics["scenario"]["groups"] for c in group}


def run_command(method: str, mode: str, workdir: str, args: argparse.Namespace,
                first_task_from: str = "") -> list[str]:
    config = config_path(method) + (":runlocal" if args.runlocal else "")
    reuse = [f"--config.first_task_from={first_task_from}"] if first_task_from else []
    return [sys.executable, "-m", "jax_cavs.main", f"--config={config}",
            f"--workdir={workdir}", f"--config.scenario.mode={mode}", *reuse,
            *[f"--config.{override}" for override in args.override]]


def run_method(method: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs (or resumes, or skips) one method; returns {"metrics": ..., "note": ...}.

    A method reusing the first task runs the source first when it has not finished."""
    if not os.path.exists(config_path(method)):
        return {"metrics": None, "note": f"skipped: configs/{method}.py does not exist"}
    workdir = os.path.abspath(os.path.join(args.root, mode, method))
    first_task_from = ""
    if args.share_first_task and reuses_first_task(method):
        source = run_method(FIRST_TASK_SOURCE, mode, args)
        if source["metrics"] is None:
            return {"metrics": None, "note": f"{FIRST_TASK_SOURCE}'s first task is missing: "
                                             f"{source['note']}"}
        first_task_from = os.path.abspath(os.path.join(args.root, mode, FIRST_TASK_SOURCE))
    metrics = read_metrics(workdir)
    if is_finished(metrics):
        print(f"[{mode}] {method}: finished earlier ({workdir})", flush=True)
        return {"metrics": metrics, "note": ""}
    if args.no_run:
        return {"metrics": None, "note": "not run"}
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "run.log")
    print(f"[{mode}] {method}: running, log in {log_path}", flush=True)
    start = time.time()
    with open(log_path, "a") as log:
        returncode = subprocess.run(run_command(method, mode, workdir, args,
                                                first_task_from), cwd=REPO,
                                    stdout=log, stderr=subprocess.STDOUT).returncode
    metrics = read_metrics(workdir)
    print(f"[{mode}] {method}: exit {returncode} after {time.time() - start:.0f} s", flush=True)
    if returncode != 0 or not is_finished(metrics):
        return {"metrics": None, "note": f"failed (exit {returncode}), see {log_path}"}
    return {"metrics": metrics, "note": ""}


def _percent(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def table(mode: str, results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of one mode: last-task old/new/all mIoU and the CL summary (%)."""
    scenario = next((r["metrics"]["scenario"] for r in results.values() if r["metrics"]), None)
    title = f"### {mode}"
    if scenario:
        title += f" — split {scenario['split']}, subset {scenario['subset']}"
    lines = [title, "",
             "| method | old | new | all | avg. acc. | forgetting | BWT | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for method, result in results.items():
        metrics = result["metrics"]
        if metrics is None:
            lines.append(f"| {method} | - | - | - | - | - | - | {result['note']} |")
            continue
        miou = metrics["tasks"][-1]["miou"]
        summary = metrics.get("summary", {})
        lines.append("| " + " | ".join([
            method, _percent(miou["old"]), _percent(miou["new"]), _percent(miou["all"]),
            _percent(summary.get("average_accuracy")), _percent(summary.get("forgetting")),
            _percent(summary.get("bwt")), result["note"]]) + " |")
    return "\n".join(lines)


def regenerate_command(script: str) -> str:
    """The command line that reproduces this invocation's runs (``--no_run`` dropped: a
    table made without running is regenerated by running)."""
    return shlex.join(["python", script, *[a for a in sys.argv[1:] if a != "--no_run"]])


def write_readme(path: str, text: str, marker: str) -> None:
    """Replaces the section of ``path`` between ``<!-- marker:begin -->`` and
    ``<!-- marker:end -->`` with ``text`` (appends it with the markers when absent)."""
    with open(path) as f:
        content = f.read()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    section = f"{begin}\n{text}{end}\n"
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        content = head + section + ("\n" + tail if tail else "")
    else:
        content = content.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(content)


def publish(text: str, out: str, readme: str | None, marker: str) -> None:
    """Writes ``text`` to ``out`` (and, given ``readme``, between its ``marker`` markers) and
    prints it."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    if readme:
        write_readme(readme, text, marker)
    print("\n" + text)
    print(f"Written to {os.path.abspath(out)}"
          + (f" and {os.path.abspath(readme)}" if readme else ""))


def main() -> None:
    args = parse_args()
    sections = []
    for mode in args.modes:
        results = {method: run_method(method, mode, args) for method in args.methods}
        sections.append(table(mode, results))
    command = regenerate_command("benchmarks/compare_methods.py")
    text = ("mIoU (%) after the last task; old = background + first task's classes, new = "
            "later classes. Avg. acc. / forgetting / BWT over the per-task accuracy matrix "
            "(jax_cavs.core.accuracy; undefined entries excluded)."
            + (f" Every method but LwF-MC, SI and joint starts from {FIRST_TASK_SOURCE}'s "
               "trained first task." if args.share_first_task else "")
            + f"\nRegenerate: `{command}`\n\n"
            + "\n\n".join(sections) + "\n")
    publish(text, args.out, args.readme, "compare_methods")


if __name__ == "__main__":
    main()
