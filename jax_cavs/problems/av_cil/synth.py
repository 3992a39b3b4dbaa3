"""``synth_av_ci``: the embedded AV-CIL data, built on first use from SynthAVS clips and written
in the released AVE layout, so that ``release.open_release`` (the real reader) reads it.

    root = ensure_synth_av_ci(data_dir)             # default CPU sizes
    release = open_release(root, "synth_av_ci")

What a clip is (design/SYNTHETIC_AVS.md; the generator is ``data_pipelines/synth_avs_*.py``,
called directly, without TFDS): one SynthAVS clip of L frames with exactly one sounding object,
whose class is the label (``multi_source_share = 0``; class id = SynthAVS class - 1, names
as SynthAVS's), plus silent distractors: visible objects of other classes that make no sound,
among them, often, the label's look-alike partner (same shape and hue, differing by a faint
texture). The pixels cannot tell which object sounds, so vision alone is ambiguous on those
clips. A seeded share ``weak_audio_share`` of the clips of every split has its SNR redrawn
from ``weak_snr_db_range`` (SynthAVS's own weak-SNR corruption touches train clips only), so
audio alone fails there and vision must decide. The features are the frozen extractor's
(``synth_extractor``): one audio vector [audio_dim] and visual tokens [L x S, visual_dim]
(token order (frame, patch), as VideoMAE's (t, h, w)).

Splits: train = SynthAVS train clips; val and test = SynthAVS test clips 0 .. K val - 1 and
K val .. K (val + test) - 1 (clip i's sounding class is i mod K, so every class has the same
count in every split). Video ids are ``<split>_<index:06d>``.

Storage: ``<data_dir>/synth_av_ci/<hash>/synth_av_ci/`` with the five files of the AVE layout
(``release_files``) and ``<hash>/generation.json`` (the knobs); ``<hash>`` is the SHA-256 (16
hex digits) of the knobs and the extractor version, so another size is another folder and a
finished folder is reused. It is built in a temporary sibling folder and renamed into place
(atomic: a folder that exists is complete; concurrent builders keep the first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from jax_cavs.data import audio as audio_lib
from jax_cavs.problems.av_cil import release_files as files
from jax_cavs.problems.av_cil import synth_extractor

NAME = "synth_av_ci"
_WEAK_AUDIO_STREAM = 13


@dataclasses.dataclass(frozen=True)
class SynthAVCIConfig:
    """The knobs of ``synth_av_ci`` (defaults: the CPU size of the embedded runs).

    Sizes: num_classes (K), {train,val,test}_per_class clips per class, num_frames (L),
    num_patches (S, a square: a sqrt(S) x sqrt(S) grid), visual_dim (d), audio_dim (d_a),
    image_size (pixels; divisible by sqrt(S)). Scenes (SynthAVS knobs): num_communities,
    silent_distractor_prob (a clip has 1.. more silent objects), lookalike_share (classes in
    look-alike pairs), lookalike_distractor_prob (the partner is added silent), max_speed,
    snr_db_range (clean clips), weak_audio_share and weak_snr_db_range (clips whose audio
    drowns in noise). seed: every draw (identities, clips, extractor).
    """

    num_classes: int = 20
    train_per_class: int = 60
    val_per_class: int = 10
    test_per_class: int = 10
    num_frames: int = 4
    num_patches: int = 16
    visual_dim: int = 64
    audio_dim: int = 64
    image_size: int = 32
    num_communities: int = 4
    silent_distractor_prob: float = 0.6
    lookalike_share: float = 0.3
    lookalike_distractor_prob: float = 0.5
    max_speed: float = 0.03
    snr_db_range: tuple[float, float] = (0.0, 20.0)
    weak_audio_share: float = 0.3
    weak_snr_db_range: tuple[float, float] = (-30.0, -24.0)
    seed: int = 0

    def __post_init__(self):
        for field in ("snr_db_range", "weak_snr_db_range"):
            object.__setattr__(self, field, tuple(float(v) for v in getattr(self, field)))
        if min(self.train_per_class, self.val_per_class, self.test_per_class) < 1:
            raise ValueError(f"synth_av_ci: clips per class must be >= 1, got train/val/test = "
                             f"{self.train_per_class}/{self.val_per_class}/"
                             f"{self.test_per_class}.")
        if not 0.0 <= self.weak_audio_share <= 1.0:
            raise ValueError(f"synth_av_ci: weak_audio_share={self.weak_audio_share} must be in "
                             f"[0, 1].")

    def params(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(extractor_version=synth_extractor.EXTRACTOR_VERSION)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def content_hash(self) -> str:
        text = json.dumps(self.params(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def synth_avs_config(self):
        """The SynthAVSConfig of the clips (SynthAVS checks the ranges)."""
        from data_pipelines.synth_avs_config import SynthAVSConfig

        return SynthAVSConfig(
            name=f"{NAME}_{self.content_hash()}", seed=self.seed, num_classes=self.num_classes,
            num_communities=min(self.num_communities, self.num_classes),
            image_size=self.image_size, num_frames=self.num_frames,
            train_clips_per_class=self.train_per_class,
            test_clips_per_class=self.val_per_class + self.test_per_class,
            multi_source_share=0.0, silent_distractor_prob=self.silent_distractor_prob,
            lookalike_share=self.lookalike_share,
            lookalike_distractor_prob=self.lookalike_distractor_prob, max_speed=self.max_speed,
            low_consistency_share=0.0, snr_db_range=self.snr_db_range,
            weak_snr_db_range=self.weak_snr_db_range)


def _clips(cfg: SynthAVCIConfig):
    """(split, video id, class id, SynthAVS split, SynthAVS index) of every clip."""
    k = cfg.num_classes
    for i in range(k * cfg.train_per_class):
        yield "train", f"train_{i:06d}", i % k, "train", i
    for i in range(k * (cfg.val_per_class + cfg.test_per_class)):
        split = "val" if i < k * cfg.val_per_class else "test"
        j = i if split == "val" else i - k * cfg.val_per_class
        yield split, f"{split}_{j:06d}", i % k, "test", i


def _weak_snr(cfg: SynthAVCIConfig, avs_split: str, index: int) -> float | None:
    """The redrawn SNR of a weak-audio clip, None for a clean one."""
    from data_pipelines.synth_avs_scenes import SPLIT_IDS

    rng = np.random.default_rng(np.random.SeedSequence(
        [cfg.seed, _WEAK_AUDIO_STREAM, SPLIT_IDS[avs_split], index]))
    weak, snr = rng.random() < cfg.weak_audio_share, rng.uniform(*cfg.weak_snr_db_range)
    return float(snr) if weak else None


def _features(generator, extractor, cfg: SynthAVCIConfig, avs_split: str, index: int):
    plan = generator.plan(avs_split, index)
    snr = _weak_snr(cfg, avs_split, index)
    if snr is not None:
        plan = dataclasses.replace(plan, snr_db=snr)
    clip = generator.render(plan)
    tokens = extractor.visual_tokens(clip["frames"])
    audio = extractor.audio_vector(audio_lib.int16_to_float(clip["audio"]))
    return audio, tokens.reshape(-1, tokens.shape[-1])


def _write(cfg: SynthAVCIConfig, folder: str, progress: bool) -> None:
    """Generates every clip and writes the five files of the AVE layout into ``folder``."""
    from tqdm import tqdm

    from data_pipelines.synth_avs_scenes import SynthAVSGenerator

    generator = SynthAVSGenerator.from_config(cfg.synth_avs_config())
    extractor = synth_extractor.Extractor(cfg.seed, cfg.num_patches, cfg.visual_dim,
                                          cfg.audio_dim)
    names = list(generator.identities.names[1:])
    audio, visual = {}, {}
    members = {s: {c: [] for c in range(cfg.num_classes)} for s in files.SPLITS}
    labels = {s: {} for s in files.SPLITS}
    clips = list(_clips(cfg))
    for split, vid, cid, avs_split, index in tqdm(clips, desc=f"building {NAME}", unit="clip",
                                                  file=sys.stderr, disable=not progress):
        audio[vid], visual[vid] = _features(generator, extractor, cfg, avs_split, index)
        members[split][cid].append(vid)
        labels[split][vid] = names[cid]
    for relative in (files.AUDIO_FILE, files.VISUAL_DICT_FILE):
        os.makedirs(os.path.join(folder, os.path.dirname(relative)), exist_ok=True)
    # np.save of our own dicts (written here, read back by the restricted unpickler).
    for relative, value in ((files.CLASS_FILE, {n: c for c, n in enumerate(names)}),
                            (files.MEMBERSHIP_FILE, members), (files.LABEL_FILE, labels),
                            (files.AUDIO_FILE, audio), (files.VISUAL_DICT_FILE, visual)):
        np.save(os.path.join(folder, relative), value, allow_pickle=True)


def ensure_synth_av_ci(data_dir: str, progress: bool = True, **sizes) -> str:
    """Builds ``synth_av_ci`` under ``data_dir`` unless it is there; returns the DIR to pass to
    ``open_release(DIR, "synth_av_ci")``.

    Args:
        data_dir: where datasets live (e.g. ``jax_cavs.data.DEFAULT_DATA_DIR``).
        progress: show a progress bar (stderr) while building.
        **sizes: fields of ``SynthAVCIConfig`` (an unknown name is an error).
    """
    known = {f.name for f in dataclasses.fields(SynthAVCIConfig)}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise ValueError(f"synth_av_ci: unknown size field(s) {unknown}; known: {sorted(known)}.")
    cfg = SynthAVCIConfig(**sizes)
    cfg.synth_avs_config()  # checks the SynthAVS ranges before any work
    parent = os.path.join(os.path.expanduser(os.fspath(data_dir)), NAME)
    final = os.path.join(parent, cfg.content_hash())
    if os.path.isdir(os.path.join(final, NAME)):
        return final
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{cfg.content_hash()}.", dir=parent)
    try:
        _write(cfg, os.path.join(staging, NAME), progress)
        with open(os.path.join(staging, "generation.json"), "w") as f:
            json.dump(cfg.params(), f, indent=1, sort_keys=True)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the data from other users
        try:
            os.rename(staging, final)
        except OSError:
            if not os.path.isdir(os.path.join(final, NAME)):  # not a concurrent builder's win
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
