"""CMR on SynthAVS in the shapes of the paper's tables (Hong et al. 2025, Tables 1 and 3).

  python benchmarks/cmr_ablation.py --readme README.md          # full size, writes the README
  python benchmarks/cmr_ablation.py --runlocal --override dataset.data_dir=/tmp/jcdata \\
      --root /tmp/cmr_ablation --only overlapped/plop,overlapped/cmr

Tables (mIoU % after the last task; old = background + the first task's classes, new = the
classes of the later tasks, all = every class, the paper's "1-60 | 61-70 | all" columns):

* **Table 1**: FT, LwF, MiB, PLOP, CMR and joint training, overlapped and disjoint.
* **Table 3 (selection)**: CMR with the memory chosen at random, by the smallest or largest
  signed deviation Δ = s_av − s_v, or by MSS (smallest |Δ|), plus MSS without CSR; with two
  columns from the generator's ground truth: the share of low-consistency clips (audio that
  disagrees with the labels: weak SNR, late onset, early offset, mismatched sound) among the
  stored videos, and their mean |Δ|. The base rate among the scored videos is given below the
  table: random selection should match it, MSS should stay under it. A last row scores with
  the learner fed zero audio instead of a trained visual-only twin (``visual=zero_audio``).
* **Table 3 (memory)**: CMR with 3, 5 and 7 videos per class.

Every run is ``python -m jax_cavs.main --config configs/<method>.py[:args]`` in its own
workdir ``<root>/<run>`` (log in ``run.log``), one after the other; the CMR default run is
shared by the three tables, and the default root is ``compare_methods.py``'s, so Table 1
reuses its runs. As there, every method but joint training starts from fine-tuning's trained
first task (``--config.first_task_from``; ``--no_share_first_task`` trains it in every run). Resumable: a finished run (its ``metrics.json`` covers every class
of the scenario) is skipped, an unfinished one resumes from its checkpoint. ``--seeds N``
repeats every run with ``config.seed = 0..N-1`` and reports mean ± std. The markdown goes to
``--out`` (default ``<root>/cmr_ablation.md``), and with ``--readme`` between the markers
``<!-- cmr_ablation:begin -->`` / ``<!-- cmr_ablation:end -->`` of that file (appended when
absent).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_methods import (  # noqa: E402
    FIRST_TASK_SOURCE, REPO, is_finished, publish, read_metrics, regenerate_command,
    reuses_first_task)

MODES = ("overlapped", "disjoint")
TABLE1_METHODS = (("FT", "finetune"), ("LwF", "lwf"), ("MiB", "mib"), ("PLOP", "plop"),
                  ("CMR (ours)", "cmr"), ("Joint", "joint"))
SELECTION_ROWS = (("Random", "selection=random"), ("Smallest Δ", "selection=smallest"),
                  ("Largest Δ", "selection=largest"), ("MSS (smallest abs Δ)", ""),
                  ("MSS without CSR", "csr=False"),
                  ("MSS, f^v = learner with zero audio", "visual=zero_audio"))
MEMORY_ROWS = (("3 per class", "memory=3"), ("5 per class", ""), ("7 per class", "memory=7"))


@dataclasses.dataclass(frozen=True)
class Run:
    """One experiment: ``configs/<method>.py:<arg>`` in scenario ``mode`` with ``seed``."""

    method: str
    mode: str
    arg: str = ""
    seed: int = 0

    @property
    def name(self) -> str:
        suffix = "_" + self.arg.replace("=", "_").replace(",", "_") if self.arg else ""
        seed = f"_seed{self.seed}" if self.seed else ""
        return f"{self.mode}/{self.method}{suffix}{seed}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runlocal", action="store_true",
                        help="the configs' runlocal variant (tiny data, small model)")
    parser.add_argument("--root", default=None,
                        help="directory of the runs (default workdirs/synthavs[_runlocal], "
                             "shared with compare_methods.py)")
    parser.add_argument("--out", default=None,
                        help="markdown file (default <root>/cmr_ablation.md)")
    parser.add_argument("--readme", default=None,
                        help="also write the tables between the cmr_ablation markers of this "
                             "file (e.g. README.md)")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override for every run, e.g. dataset.data_dir=/tmp/d")
    parser.add_argument("--only", default="",
                        help="comma-separated run names to execute (e.g. overlapped/cmr); the "
                             "tables still show every run finished earlier")
    parser.add_argument("--no_run", action="store_true",
                        help="start no run: tabulate the runs finished so far")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per run (mean ± std)")
    parser.add_argument("--ablation_mode", choices=MODES, default="overlapped",
                        help="scenario mode of the Table 3 ablations")
    parser.add_argument("--no_share_first_task", dest="share_first_task",
                        action="store_false",
                        help="train the first task in every run instead of reusing "
                             "fine-tuning's")
    args = parser.parse_args()
    for override in args.override:
        if "=" not in override:
            parser.error(f"--override {override!r} must be FIELD=VALUE")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    args.only = {name for name in args.only.split(",") if name}
    args.root = args.root or os.path.join(
        "workdirs", "synthavs_runlocal" if args.runlocal else "synthavs")
    args.out = args.out or os.path.join(args.root, "cmr_ablation.md")
    return args


def all_runs(args: argparse.Namespace) -> list[Run]:
    """Every run of the three tables (each once), for every seed."""
    runs = [Run(method, mode) for mode in MODES for _, method in TABLE1_METHODS]
    runs += [Run("cmr", args.ablation_mode, arg) for _, arg in SELECTION_ROWS + MEMORY_ROWS]
    unique = list(dict.fromkeys(runs))
    return [dataclasses.replace(run, seed=seed) for seed in range(args.seeds) for run in unique]


def first_task_source(run: Run, args: argparse.Namespace) -> Run | None:
    """The fine-tuning run whose trained first task ``run`` reuses (None: trains its own)."""
    if args.share_first_task and reuses_first_task(run.method):
        return Run(FIRST_TASK_SOURCE, run.mode, seed=run.seed)
    return None


def command(run: Run, workdir: str, args: argparse.Namespace) -> list[str]:
    parts = [p for p in (run.arg, "runlocal" if args.runlocal else "") if p]
    config = os.path.join(REPO, "configs", f"{run.method}.py")
    config += ":" + ",".join(parts) if parts else ""
    overrides = [f"--config.scenario.mode={run.mode}", f"--config.seed={run.seed}"]
    source = first_task_source(run, args)
    if source:
        overrides.append("--config.first_task_from="
                         + os.path.abspath(os.path.join(args.root, source.name)))
    return [sys.executable, "-m", "jax_cavs.main", f"--config={config}",
            f"--workdir={workdir}", *overrides,
            *[f"--config.{override}" for override in args.override]]


def execute(run: Run, args: argparse.Namespace) -> str:
    """Runs (or resumes, or skips) ``run``; returns a note ('' when finished)."""
    workdir = os.path.abspath(os.path.join(args.root, run.name))
    if is_finished(read_metrics(workdir)):
        print(f"{run.name}: finished earlier ({workdir})", flush=True)
        return ""
    if args.no_run or (args.only and run.name not in args.only):
        return "not run"
    source = first_task_source(run, args)
    if source and execute(source, args_without_only(args)):
        return f"not run: {source.name} (its first task) did not finish"
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "run.log")
    print(f"{run.name}: running, log in {log_path}", flush=True)
    start = time.time()
    with open(log_path, "a") as log:
        returncode = subprocess.run(command(run, workdir, args), cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT).returncode
    print(f"{run.name}: exit {returncode} after {time.time() - start:.0f} s", flush=True)
    if returncode != 0 or not is_finished(read_metrics(workdir)):
        return f"failed (exit {returncode}), see {log_path}"
    return ""


def args_without_only(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "only": set()})


# -- reading results ----------------------------------------------------------------------

def finished_metrics(run: Run, args: argparse.Namespace) -> dict[str, Any] | None:
    metrics = read_metrics(os.path.join(args.root, run.name))
    return metrics if is_finished(metrics) else None


def memory_statistics(workdir: str, consistency_of: dict) -> dict[str, float] | None:
    """Share of low-consistency clips (generator truth: consistency < 1) among the videos
    MSS stored over all tasks, their mean |Δ|, and the base rate among the scored videos."""
    directory = os.path.join(workdir, "memory")
    if not os.path.isdir(directory):
        return None
    selected, scored = {}, {}
    for name in sorted(os.listdir(directory)):
        if not (name.startswith("task_") and name.endswith(".json")):
            continue
        with open(os.path.join(directory, name)) as f:
            record = json.load(f)
        for entry in record["classes"].values():
            selected.update({s["id"]: abs(s["deviation"]) for s in entry["selected"]})
            scored.update({s["id"]: abs(s["deviation"]) for s in entry["scored"]})
    if not selected:
        return None
    with open(os.path.join(workdir, "config.json")) as f:
        dataset = json.load(f)["dataset"]
    consistency = consistency_of(dataset["name"], dataset["config"], dataset["data_dir"])
    low = lambda ids: float(np.mean([consistency[i] < 1.0 for i in ids]))
    return {"low_share": low(list(selected)), "mean_abs_deviation":
            float(np.mean(list(selected.values()))), "base_rate": low(list(scored))}


def dataset_consistency():
    """``(name, config, data_dir) -> float32 [N]`` true consistency of the train records."""
    cache = {}

    def lookup(name, config, data_dir):
        if (name, config, data_dir) not in cache:
            from jax_cavs.data import sources  # heavy import, only when tables need it
            cache[name, config, data_dir] = np.asarray(
                sources.load_dataset(name, config, data_dir).index["train"].consistency)
        return cache[name, config, data_dir]

    return lookup


# -- markdown -----------------------------------------------------------------------------

def cell(values: list[float | None], scale: float = 100.0, digits: int = 1) -> str:
    """Mean (± std over seeds) of the available values, '-' if none."""
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    text = f"{scale * np.mean(values):.{digits}f}"
    return text + (f" ± {scale * np.std(values):.{digits}f}" if len(values) > 1 else "")


def miou_cells(runs: list[Run], args) -> list[str]:
    metrics = [finished_metrics(run, args) for run in runs]
    return [cell([m["tasks"][-1]["miou"][k] if m else None for m in metrics])
            for k in ("old", "new", "all")]


def seeds_of(run: Run, args) -> list[Run]:
    return [dataclasses.replace(run, seed=s) for s in range(args.seeds)]


def scenario_line(args) -> str:
    for run in all_runs(args):
        metrics = finished_metrics(run, args)
        if metrics:
            sc = metrics["scenario"]
            return (f"Split {sc['split']} ({len(sc['groups'])} tasks), subset {sc['subset']}; "
                    f"first task classes {sc['groups'][0]}.")
    return "No finished run yet."


def table1(args) -> list[str]:
    lines = ["| Method | " + " | ".join(f"{m} old | {m} new | {m} all" for m in MODES) + " |",
             "|---|" + "---:|" * (3 * len(MODES))]
    for label, method in TABLE1_METHODS:
        row = [label]
        for mode in MODES:
            row += miou_cells(seeds_of(Run(method, mode), args), args)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def table3_selection(args, consistency_of) -> list[str]:
    lines = ["| Selection | old | new | all | low-consistency in memory (%) | mean abs Δ |",
             "|---|---:|---:|---:|---:|---:|"]
    base_rates = []
    for label, arg in SELECTION_ROWS:
        runs = seeds_of(Run("cmr", args.ablation_mode, arg), args)
        stats = [memory_statistics(os.path.join(args.root, r.name), consistency_of)
                 if finished_metrics(r, args) else None for r in runs]
        stats = [s for s in stats if s]
        base_rates += [s["base_rate"] for s in stats]
        lines.append("| " + " | ".join([
            label, *miou_cells(runs, args), cell([s["low_share"] for s in stats]),
            cell([s["mean_abs_deviation"] for s in stats], scale=1.0, digits=3)]) + " |")
    base = f"{100 * np.mean(base_rates):.1f}" if base_rates else "-"
    lines += ["", f"Low-consistency share among all scored training videos (the expectation "
                  f"of random selection): {base}%."]
    return lines


def table3_memory(args) -> list[str]:
    lines = ["| Memory | old | new | all |", "|---|---:|---:|---:|"]
    for label, arg in MEMORY_ROWS:
        lines.append("| " + " | ".join(
            [label, *miou_cells(seeds_of(Run("cmr", args.ablation_mode, arg), args), args)])
            + " |")
    return lines


def markdown(args, notes: dict[str, str]) -> str:
    regenerate = regenerate_command("benchmarks/cmr_ablation.py")
    failed = [f"* `{name}`: {note}" for name, note in notes.items() if note]
    seeds = f"mean ± std over {args.seeds} seeds" if args.seeds > 1 else "seed 0"
    parts = [
        "## CMR on SynthAVS" + (" (runlocal: tiny data, smoke test only)" if args.runlocal
                                else ""),
        "",
        f"Regenerate: `{regenerate}`",
        "",
        f"mIoU (%) after the last task, {seeds}. Old = background + the first task's "
        f"classes, new = the later tasks' classes. {scenario_line(args)}",
        "",
        "### Table 1: methods, overlapped and disjoint", "", *table1(args), "",
        f"### Table 3: memory selection ({args.ablation_mode})", "",
        *table3_selection(args, dataset_consistency()), "",
        f"### Table 3: memory size ({args.ablation_mode})", "", *table3_memory(args)]
    if failed:
        parts += ["", "Runs without results:", *failed]
    return "\n".join(parts) + "\n"


def main() -> None:
    args = parse_args()
    notes = {run.name: execute(run, args) for run in all_runs(args)}
    publish(markdown(args, notes), args.out, args.readme, "cmr_ablation")


if __name__ == "__main__":
    main()
