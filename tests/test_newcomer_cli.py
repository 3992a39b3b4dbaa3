"""The usual command-line mistakes end in one line naming the culprit and the fix, exit status
2, no traceback; ``--verbose`` shows the traceback instead; an internal error keeps its
traceback."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from conftest import ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jax_cavs.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_a_misspelt_field_names_the_nearest_valid_one(tmp_path):
    result = run_cli("--config", "configs/finetune.py:runlocal", "--workdir", str(tmp_path),
                     "--config.train.epochz=3")
    assert (result.returncode, result.stderr) == (
        2, "error: --config.train.epochz: the config has no field train.epochz; did you mean "
           "--config.train.epochs?\n")
    result = run_cli("--config", "configs/finetune.py:runlocal", "--config.trian.epochs=3")
    assert result.stderr == ("error: --config.trian.epochs: the config has no field trian; "
                             "did you mean --config.train.epochs?\n")
    assert not os.listdir(tmp_path)


def test_a_missing_config_file_lists_the_configs():
    configs = ", ".join(os.path.join("configs", os.path.basename(p))
                        for p in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
    result = run_cli("--config", "configs/finetun.py")
    assert (result.returncode, result.stderr) == (
        2, f"error: config file configs/finetun.py does not exist; did you mean "
           f"configs/finetune.py? configs: {configs}.\n")


def test_verbose_shows_the_traceback_of_a_mistake():
    result = run_cli("--config", "configs/finetune.py:runlocal", "--config.train.epochz=3",
                     "--verbose")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "epochz" in result.stderr.splitlines()[-1]


def test_an_internal_error_keeps_its_traceback(tmp_path):
    config = tmp_path / "broken.py"
    config.write_text("def get_config(arg=None):\n    raise RuntimeError('a bug in the config')\n")
    result = run_cli("--config", str(config))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1] == "RuntimeError: a bug in the config"
