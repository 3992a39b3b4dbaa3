"""Quiet first use and quiet failures: building a dataset prints one project line instead of
TFDS's "has no dataset_info.json" warning, "Downloading and preparing dataset" lines and
progress bars (nothing is downloaded); a model that does not fit the run is refused naming
the leaves, without starting orbax's restore, whose failed reads used to surface later as
thousands of lines of "Exception ignored ... Encountered error while reading array index"."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT
from jax_cavs.data import sources

TFDS_LINES = ("dataset_info.json", "Downloading and preparing", "Generating", "Shuffling",
              "Subsequent calls")


def test_the_first_build_prints_one_line(tmp_path, capfd, caplog):
    sources.load_dataset("synth_avs", "tiny", str(tmp_path))
    out, err = capfd.readouterr()
    assert out == ""
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    # The class index bars clear themselves (only their frames remain in the raw stream).
    assert [line for line in lines if not line.startswith("Indexing synth_avs/tiny")] == [
        line for line in lines if line.startswith("[jax_cavs]")]
    (line,) = [line for line in lines if line.startswith("[jax_cavs]")]
    assert re.fullmatch(r"\[jax_cavs\] Building synth_avs/tiny into \S+/synth_avs/tiny/1\.0\.0 "
                        r"\(first use; later loads reuse it\)\.\.\. done in \d+\.\d s\.", line)
    for text in TFDS_LINES:
        assert text not in err and text not in caplog.text, text

    sources.load_dataset("synth_avs", "tiny", str(tmp_path))  # built: silent
    assert capfd.readouterr() == ("", "")


# Run in a fresh interpreter, reporting every unraisable exception as pytest's hook does, up to
# and including the interpreter's exit (where orbax's pending reads were collected).
MISFIT = """
sys.unraisablehook = lambda u: print("Exception ignored:", u.exc_value, file=sys.stderr)
import jax.numpy as jnp, numpy as np
from jax_cavs.core import checkpoint as ckpt_lib
params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))}}
ckpt_lib.save_task_model(sys.argv[1], 0, params, {})
wrong = {"dense": {"kernel": np.zeros((2, 3, 2), np.float32), "bias": np.zeros((3,))}}
try:
    ckpt_lib.load_task_model(sys.argv[1], 0, wrong, {})
except ckpt_lib.CorruptCheckpoint as error:
    print(error)
"""


def test_a_misfit_model_is_refused_naming_its_leaves_and_leaves_no_failed_reads(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import sys" + MISFIT, str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['dense']['kernel']: saved (2, 3), expected (2, 3, 2)); the two runs must use " \
           "the same model config." in result.stdout
    assert "Exception ignored" not in result.stderr
    assert "Encountered error while reading array index" not in result.stderr
