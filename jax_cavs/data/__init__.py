"""Data sources, audio features and transforms shared by every problem."""

import os

# The label of pixels that no loss, score or pass counts: AVSBench's (and VOC's) 255, written
# into the label maps by the sources and by the streams (unannotated frames).
IGNORE_INDEX = 255

# Where datasets are built on first use (SynthAVS, synth_av_ci) and looked for by default.
DEFAULT_DATA_DIR = os.environ.get(
    "JAX_CAVS_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jax_cavs", "data"))
