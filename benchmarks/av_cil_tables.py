"""AV-CIL's Table 1 and Table 2 shapes on the embedded ``synth_av_ci`` data: every method, every
modality, over seeds.

  python benchmarks/av_cil_tables.py                          # 10 methods x 3 modalities, seed 0
  python benchmarks/av_cil_tables.py --seeds 0,1,2 --readme README.md
  python benchmarks/av_cil_tables.py --runlocal --methods av_cil,finetune --root /tmp/t

Each run is ``python -m jax_cavs.main --config configs/<config>.py:[runlocal,]modality=<m>
--config.seed=<s>`` in ``<root>/<method>/<modality>/seed_<s>`` (log in ``run.log``); a run whose
``metrics.json`` covers every task is not run again, an unfinished one resumes. The table gives
mean accuracy (eq 15) and average forgetting (eq 16, the authors' running max) in %, as
mean ± standard deviation over the seeds, for the audio, visual and audio-visual rows of
AV-CIL's Table 2 (audio-visual = its Table 1). Forgetting is not defined for the oracle
(retrained from scratch every task; the authors' code prints none). With ``--readme`` the
table goes between ``<!-- av_cil_tables:begin -->`` and ``<!-- av_cil_tables:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_methods import publish, regenerate_command  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# method -> (config, its argument): Table 1's rows.
METHODS = {"finetune": ("av_cil_finetune", ""), "lwf": ("av_cil_lwf", ""),
           "icarl_nme": ("av_cil_icarl", ""), "icarl_fc": ("av_cil_icarl", "fc"),
           "ssil": ("av_cil_ssil", ""), "afc_nme": ("av_cil_afc", ""),
           "afc_lsc": ("av_cil_afc", "lsc"), "av_cil": ("av_cil", ""),
           "oracle": ("av_cil_oracle", "")}
MODALITIES = ("audio", "visual", "audio-visual")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--modalities", default=",".join(MODALITIES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--runlocal", action="store_true")
    parser.add_argument("--root", default=None, help="default workdirs/av_cil[_runlocal]")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--out", default=None, help="default <root>/tables.md")
    parser.add_argument("--readme", default=None)
    return parser.parse_args()


def finished(workdir: str) -> dict | None:
    try:
        with open(os.path.join(workdir, "metrics.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    return metrics if "summary" in metrics else None


def run(method: str, modality: str, seed: int, args) -> dict | None:
    workdir = os.path.join(args.root, method, modality, f"seed_{seed}")
    if (metrics := finished(workdir)) is not None:
        return metrics
    config, arg = METHODS[method]
    arg = ",".join(filter(None, ["runlocal" if args.runlocal else "", arg,
                                 f"modality={modality}"]))
    command = [sys.executable, "-m", "jax_cavs.main", f"--config=configs/{config}.py:{arg}",
               f"--workdir={workdir}", f"--config.seed={seed}",
               *[f"--config.{o}" for o in args.override]]
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    with open(os.path.join(workdir, "run.log"), "w") as log:
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    print(f"{method:10s} {modality:12s} seed {seed}: "
          f"{'ok' if code == 0 else f'FAILED ({code})'} in {time.time() - start:.0f} s",
          flush=True)
    return finished(workdir)


def cell(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = 100 * np.mean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * np.std(values):.1f}"


def table(results, methods, modalities, seeds) -> str:
    header = "| method | " + " | ".join(f"{m} acc | {m} forget" for m in modalities) + " |"
    lines = [f"Mean accuracy (eq 15) / average forgetting (eq 16), %, on synth_av_ci; seeds "
             f"{', '.join(map(str, seeds))} (mean ± std over seeds when several). With one modality "
             "AV-CIL has no audio-visual term and is SS-IL (identical rows).", "",
             header, "|---|" + "---:|" * (2 * len(modalities))]
    for method in methods:
        row = []
        for m in modalities:
            runs = [results.get((method, m, s)) for s in seeds]
            summaries = [r["summary"] for r in runs if r]
            row.append(cell([s.get("mean_accuracy") for s in summaries]))
            row.append("-" if method == "oracle"
                       else cell([s.get("average_forgetting") for s in summaries]))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    args.root = args.root or os.path.join(REPO, "workdirs",
                                          "av_cil_runlocal" if args.runlocal else "av_cil")
    methods = args.methods.split(",")
    modalities = args.modalities.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(modalities) - set(MODALITIES))
    if unknown:
        sys.exit(f"error: unknown {', '.join(unknown)}; methods: {', '.join(METHODS)}; "
                 f"modalities: {', '.join(MODALITIES)}")
    results = {(method, m, s): run(method, m, s, args)
               for s in seeds for m in modalities for method in methods}
    text = (table(results, methods, modalities, seeds)
            + f"\nRegenerate: `{regenerate_command('benchmarks/av_cil_tables.py')}`\n")
    publish(text, args.out or os.path.join(args.root, "tables.md"), args.readme, "av_cil_tables")


if __name__ == "__main__":
    main()
