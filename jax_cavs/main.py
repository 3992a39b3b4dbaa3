"""Command line entry point.

  python -m jax_cavs.main --config configs/cmr.py [--workdir DIR] [--config.x.y=value ...]

The config file's ``get_config(arg)`` receives what follows ``:`` in the path
(``configs/cmr.py:runlocal``). The config is locked: overriding a field that does not exist
is an error. Without ``--workdir`` the run writes to ``workdirs/<strategy>``.

A user's mistake (a config file that does not exist, a misspelt field or config argument, a
bad flag value, a workdir holding another run, bad data) ends in one ``error:`` line naming
the culprit and the fix, exit status 2; ``--verbose`` shows the traceback instead. Anything
else is an internal error and keeps its traceback. A SIGINT/SIGTERM stops the run at its next
checkpoint (``core.interrupts``) and prints the command that resumes it, exit status 128 +
the signal (130 for Ctrl-C).

Multi-process runs (several hosts, or one process per GPU) start the same command in every
process; ``config.parallel.distributed`` and the cluster environment decide whether
``jax.distributed`` is initialised (``jax_cavs/core/distributed.py``, ``launch/``).
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import re
import shlex
import signal
import sys

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class UserMistake(Exception):
    """A mistake on the command line: reported in one line (module doc)."""


def _listing(directory: str) -> list[str]:
    return [os.path.relpath(p) for p in sorted(glob.glob(os.path.join(directory, "*.py")))]


def missing_config_message(path: str) -> str:
    """One line for a config file that does not exist: the nearest config and all of them
    (``configs/*.py`` beside the named file, else the repository's)."""
    directory = os.path.dirname(path)
    configs = _listing(directory if directory and os.path.isdir(directory) else CONFIGS)
    close = difflib.get_close_matches(path, configs, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"config file {path} does not exist; {hint}configs: {', '.join(configs)}."


def core_train_defaults() -> dict[str, float]:
    """Fields of ``config.train`` that the core loop reads with a default when a problem's
    config leaves them out; added to a loaded config (before the overrides are applied) so
    the command line can set them."""
    from jax_cavs.core import interrupts  # imports jax: only once a config file is read

    return {"checkpoint_minutes": interrupts.DEFAULT_CHECKPOINT_MINUTES}


class ConfigFileParser(flags.ArgumentParser):
    """``--config FILE.py[:arg]``: the file's ``get_config(arg)``, with the core's train
    defaults (``core_train_defaults``), locked. A missing file or a rejected ``arg`` is a
    ``UserMistake``; ``loaded`` keeps the config for naming a misspelt override."""

    def __init__(self):
        self.loaded: ConfigDict | None = None

    def flag_type(self) -> str:
        return "config object"

    def parse(self, path):
        file, colon, arg = path.partition(":")
        if not os.path.isfile(file):
            raise UserMistake(missing_config_message(file))
        spec = importlib.util.spec_from_file_location("config_config", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            config = module.get_config(arg) if colon else module.get_config()
        except ValueError as error:  # the configs' argument parser names valid arguments
            raise UserMistake(f"--config {path}: {error}") from error
        if isinstance(config.get("train"), ConfigDict):
            for key, value in core_train_defaults().items():
                if key not in config.train:
                    config.train[key] = value
        config.lock()
        self.loaded = config
        return config


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<method>.py[:arg]).")
_PARSER = ConfigFileParser()  # loads the file instead of ml_collections' parser (and locks)
flags.FLAGS["config"].parser = _PARSER
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, report).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Continue a run in --workdir under a config that differs from its config.json (the "
    "change is recorded there); refused for a finished run.")
_VERBOSE = flags.DEFINE_bool("verbose", False,
                             "Tracebacks for user mistakes too (they print one line).")


def unknown_field_message(config: ConfigDict, argv: list[str]) -> str | None:
    """One line for the first ``--config.<path>`` override naming no field of ``config``:
    the nearest valid name, or the valid ones; None if every override names a field."""
    for arg in argv[1:]:
        match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if not match:
            continue
        parts = match.group(1).split(".")
        node, walked = config, []
        for i, part in enumerate(parts):
            if isinstance(node, ConfigDict) and part in node:
                node, walked = node[part], walked + [part]
                continue
            where = ".".join(walked)
            if not isinstance(node, ConfigDict):
                return f"--config.{match.group(1)}: config field {where} has no sub-fields."
            fields = sorted(node.keys())
            close = difflib.get_close_matches(part, fields, n=1)
            if close and _has_path(node[close[0]], parts[i + 1:]):
                close += parts[i + 1:]  # trian.epochs -> train.epochs
            hint = (f"did you mean --config.{'.'.join(walked + close)}?" if close else
                    f"the fields of {where or 'the config'}: {', '.join(fields)}.")
            return f"--config.{match.group(1)}: the config has no field " \
                   f"{'.'.join(walked + [part])}; {hint}"
    return None


def _has_path(node, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(node, ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def _wants_traceback(argv: list[str]) -> bool:
    return any(re.fullmatch(r"--?verbose(=(true|1|yes))?", a, re.IGNORECASE)
               for a in argv[1:])


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with user mistakes in one line (module doc)."""
    try:
        rest = flags.FLAGS(argv)
    except (UserMistake, flags.Error) as error:
        if _wants_traceback(argv):
            raise
        fail(str(error).strip().splitlines()[0])
    except (AttributeError, KeyError):  # ml_collections: an override of no field
        message = _PARSER.loaded and unknown_field_message(_PARSER.loaded, argv)
        if not message or _wants_traceback(argv):
            raise
        fail(message)
    if _CONFIG.value is None:
        fail(f"--config is required, e.g. --config {os.path.relpath(CONFIGS)}/finetune.py "
             f"(configs: {', '.join(_listing(CONFIGS))}).")
    if len(rest) > 1:
        fail(f"unexpected arguments: {' '.join(rest[1:])} (flags are --name=value).")
    return rest


def resume_command() -> str:
    """The command that resumes this run: the one that started it."""
    return shlex.join(["python", "-m", "jax_cavs.main", *sys.argv[1:]])


def main(argv) -> None:
    try:
        run()
    except KeyboardInterrupt:  # first: the clauses below need the modules run() imports
        print(f"\n[jax_cavs] Stopped at once: the work since the last checkpoint is lost. "
              f"Resume with: {resume_command()}", file=sys.stderr)
        sys.exit(130)


def run() -> None:
    """Runs (or resumes) the experiment of the parsed flags."""
    logging.set_verbosity(logging.WARNING)  # orbax and jax log every step at INFO
    import jax

    from jax_cavs import experiment  # heavy imports after flag parsing
    from jax_cavs.core import distributed, interrupts

    if not jax.config.jax_compilation_cache_dir:  # re-runs and resumes skip XLA compilation
        jax.config.update("jax_compilation_cache_dir", os.environ.get(
            "JAX_CAVS_XLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jax_cavs",
                                               "xla")))

    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("workdirs", config.strategy.name)
    try:
        distributed.maybe_initialize(config)  # multi-process runs: before any device is used
        with experiment.create(config, workdir, _ALLOW_CONFIG_CHANGE.value) as exp:
            exp.run()
    except interrupts.Interrupted as stop:
        if distributed.is_primary():
            print(f"[jax_cavs] {stop}. Resume with: {resume_command()}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except (ValueError, FileNotFoundError, experiment.NonFiniteLoss) as error:
        if _VERBOSE.value:
            raise
        fail(str(error))
    if distributed.is_primary():
        print(f"\nResults in {os.path.abspath(workdir)}/metrics.json")


if __name__ == "__mp_main__":
    # A process that multiprocessing spawned from a run (grain's prefetch workers import the
    # main module under this name): the run handles the stop signals and stops its workers.
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, signal.SIG_IGN)

if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
