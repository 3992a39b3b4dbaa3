"""Writes clips in the exact on-disk layouts of the AVSBench releases, e.g. from SynthAVS.

The real AVSBench data cannot be downloaded on the project's machines. This writer emits
SynthAVS clips (or any clips) as the official releases lay them out, so the real builders
(``avsbench_semantic``, ``avsbench_object``) are built and tested end to end on known content:

AVSBench-semantic (the layout ``data_pipelines/avsbench_semantic.py`` documents, spec §2.1):
    metadata.csv (vid,uid,s_min,s_sec,a_obj,split,label), label2idx.json (1-based, background 1),
    {label}/{uid}/frames/{i}.jpg, {label}/{uid}/labels_rgb/{i}.png (palette colours),
    {label}/{uid}/audio.wav (16 kHz mono int16; 5 s for v1s/v1m, 10 s for v2).
AVSBench-object (the layout ``data_pipelines/avsbench_object.py`` documents):
    Single-source/s4_meta_data.csv + s4_data/{visual_frames,gt_masks,audio_wav}/...,
    Multi-sources/ms3_meta_data.csv + ms3_data/{visual_frames,gt_masks,audio_wav}/...

Frames are written as JPEG at ``jpeg_quality`` (default 100, no chroma subsampling: the
closest JPEG gets to lossless, so a built dataset stays within a few grey levels of the
generator's frames), or PNG in the object layout (the official release ships PNG frames).

SynthAVS clips must follow AVSBench's conventions to be written as AVSBench-semantic:
5 real frames for v1s/v1m and 10 for v2 (SynthAVS ``num_frames=10`` with ``short_clip_share``
for the 5-frame clips) and v1s train clips annotated in frame 0 only
(``first_frame_only_share=1.0``); ``synth_avs_semantic_clips`` checks this.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np
import soundfile
from PIL import Image

from data_pipelines import avsbench_object, avsbench_release, avsbench_semantic
from data_pipelines.synth_avs_config import SynthAVSConfig
from data_pipelines.synth_avs_scenes import SynthAVSGenerator

SAMPLE_RATE = avsbench_release.SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class SemanticClip:
    """One AVSBench-semantic video as written.

    frames: uint8 [n, H, W, 3], the real frames (n = 5 for v1s/v1m, 10 for v2).
    labels: uint8 [m, H, W] class indices (0 = background) of the annotated frames 0..m-1.
    audio: int16 [L] 16 kHz mono.
    a_obj: the sounding-object category written to metadata.csv.
    """

    uid: str
    subset: str
    split: str
    frames: np.ndarray
    labels: np.ndarray
    audio: np.ndarray
    a_obj: str


@dataclasses.dataclass(frozen=True)
class ObjectClip:
    """One AVSBench-object (S4 / MS3) video as written.

    frames: uint8 [5, H, W, 3]; masks: bool [m, H, W] sounding-object masks of frames 0..m-1
    (m = 1 for S4 train, 5 otherwise); audio: int16 [L] 16 kHz mono; category: S4 class name
    (None for MS3).
    """

    name: str
    split: str
    frames: np.ndarray
    masks: np.ndarray
    audio: np.ndarray
    category: str | None = None


def _write_wav(path: str, audio: np.ndarray) -> None:
    if audio.dtype != np.int16 or audio.ndim != 1:
        raise ValueError(f'{path}: audio must be int16 [L] (16 kHz mono), got {audio.dtype} '
                         f'{audio.shape}.')
    soundfile.write(path, audio, SAMPLE_RATE, subtype='PCM_16')


def _write_frame(path: str, frame: np.ndarray, jpeg_quality: int) -> None:
    if path.endswith('.jpg'):
        Image.fromarray(frame).save(path, quality=jpeg_quality, subsampling=0)
    else:
        Image.fromarray(frame).save(path)


def write_semantic_release(root: str, clips: Sequence[SemanticClip], class_names: Sequence[str],
                           *, jpeg_quality: int = 100) -> None:
    """Writes an AVSBench-semantic release tree under ``root``.

    Args:
        root: output folder (created).
        clips: the videos; their labels must be < len(class_names).
        class_names: K names by 0-based index, ``'background'`` first (label2idx.json gets
            ``name: index + 1``).
        jpeg_quality: PIL JPEG quality of the frames.
    """
    if class_names[0] != 'background':
        raise ValueError(f'class_names must start with "background", got {class_names[0]!r}.')
    palette = avsbench_release.voc_palette(len(class_names))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'label2idx.json'), 'w', encoding='utf-8') as f:
        json.dump({name: i + 1 for i, name in enumerate(class_names)}, f, indent=1)
    with open(os.path.join(root, 'metadata.csv'), 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(avsbench_semantic.METADATA_COLUMNS)
        for clip in clips:
            writer.writerow([clip.uid, clip.uid, 0, 0, clip.a_obj, clip.split, clip.subset])
    for clip in clips:
        if clip.labels.size and clip.labels.max() >= len(class_names):
            raise ValueError(f'clip {clip.uid}: label {clip.labels.max()} has no palette colour '
                             f'({len(class_names)} classes).')
        folder = os.path.join(root, clip.subset, clip.uid)
        for sub in ('frames', 'labels_rgb'):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        for i, frame in enumerate(clip.frames):
            _write_frame(os.path.join(folder, 'frames', f'{i}.jpg'), frame, jpeg_quality)
        for i, labels in enumerate(clip.labels):
            Image.fromarray(palette[labels]).save(os.path.join(folder, 'labels_rgb', f'{i}.png'))
        _write_wav(os.path.join(folder, 'audio.wav'), clip.audio)


def synth_avs_semantic_clips(config: SynthAVSConfig, *, val_clips: int = 0
                             ) -> tuple[list[SemanticClip], list[str]]:
    """Every SynthAVS clip of ``config`` as an AVSBench-semantic video, and the class names.

    SynthAVS train clips go to split 'train'; its test clips 0..val_clips-1 to 'val', the rest
    to 'test'. A clip keeps its SynthAVS uid and subset; its real frames, its annotated labels
    and the audio of its real frames are written.

    Raises:
        ValueError: a clip breaks AVSBench's conventions (module docstring), naming the
            SynthAVSConfig fields to change.
    """
    generator = SynthAVSGenerator.from_config(config)
    clips = []
    for synth_split in ('train', 'test'):
        for index in range(config.num_clips(synth_split)):
            example = generator.example(synth_split, index)
            split = synth_split if synth_split == 'train' or index >= val_clips else 'val'
            clips.append(_semantic_clip(example, split, generator.identities.names))
    return clips, list(generator.identities.names)


def _semantic_clip(example: dict, split: str, class_names: Sequence[str]) -> SemanticClip:
    subset, uid = example['subset'], example['uid']
    real = int(example['frame_mask'].sum())
    annotated = 1 if (subset == 'v1s' and split == 'train') else real
    t = np.arange(len(example['frame_mask']))
    if (real != avsbench_semantic.REAL_FRAMES[subset] or not np.array_equal(
            example['frame_mask'], t < real) or not np.array_equal(example['label_mask'],
                                                                   t < annotated)):
        raise ValueError(
            f'SynthAVS clip {uid} ({subset}, {split}) has frame_mask {example["frame_mask"]} and '
            f'label_mask {example["label_mask"]}; AVSBench-semantic needs 5 real frames for '
            f'v1s/v1m and 10 for v2, annotated all but v1s train (frame 0 only). Use a '
            f'SynthAVSConfig with num_frames=10, short_clip_share > 0 and '
            f'first_frame_only_share=1.0.')
    sounding = example['object_classes'][example['object_sounding']]
    return SemanticClip(uid=uid, subset=subset, split=split, frames=example['frames'][:real],
                        labels=example['labels'][:annotated],
                        audio=example['audio'][:real * SAMPLE_RATE],
                        a_obj=class_names[int(sounding[0])])


def write_synth_avs_semantic(root: str, config: SynthAVSConfig, *, val_clips: int = 0,
                             jpeg_quality: int = 100) -> list[SemanticClip]:
    """Writes SynthAVS ``config`` as an AVSBench-semantic release; returns the written clips."""
    clips, class_names = synth_avs_semantic_clips(config, val_clips=val_clips)
    write_semantic_release(root, clips, class_names, jpeg_quality=jpeg_quality)
    return clips


def write_object_release(root: str, protocol: str, clips: Sequence[ObjectClip]) -> None:
    """Writes an AVSBench-object S4 or MS3 release tree under ``root`` (the folder holding
    Single-source/ and Multi-sources/), with the paths of ``avsbench_object.clip_paths``."""
    layout = avsbench_object.LAYOUTS[protocol]
    csv_path = os.path.join(root, layout.csv)
    os.makedirs(os.path.dirname(csv_path), exist_ok=True)
    with open(csv_path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(layout.header)
        for clip in clips:
            writer.writerow(avsbench_object.metadata_row(protocol, clip.name, clip.category,
                                                         clip.split))
    for clip in clips:
        paths = avsbench_object.clip_paths(root, protocol, clip.name, clip.category, clip.split,
                                           num_masks=len(clip.masks))
        for path in paths.frames + paths.masks + [paths.audio]:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        for path, frame in zip(paths.frames, clip.frames, strict=True):
            _write_frame(path, frame, jpeg_quality=100)
        for path, mask in zip(paths.masks, clip.masks, strict=True):
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)
        _write_wav(paths.audio, clip.audio)


def synth_avs_object_clips(config: SynthAVSConfig, protocol: str, *, val_clips: int = 0
                           ) -> list[ObjectClip]:
    """SynthAVS clips as S4 (single-source 'v1s' clips, category = the class name) or MS3
    ('v1m' multi-source clips, class-agnostic) videos of 5 frames, splits as
    ``synth_avs_semantic_clips``. Masks are the sounding objects' pixels (labels > 0).

    Raises:
        ValueError: ``config`` does not give 5-frame clips with AVSBench-object's annotation
            (S4 train: frame 0 only; otherwise all 5).
    """
    layout = avsbench_object.LAYOUTS[protocol]
    if config.num_frames != 5 or config.short_clip_share:
        raise ValueError(f'AVSBench-object clips have 5 real frames: use a SynthAVSConfig with '
                         f'num_frames=5 and short_clip_share=0 (got {config.num_frames}, '
                         f'{config.short_clip_share}).')
    generator = SynthAVSGenerator.from_config(config)
    names = generator.identities.names
    clips = []
    for synth_split in ('train', 'test'):
        for index in range(config.num_clips(synth_split)):
            example = generator.example(synth_split, index)
            if example['subset'] != layout.synth_subset:
                continue
            split = synth_split if synth_split == 'train' or index >= val_clips else 'val'
            annotated = layout.num_masks(split)
            if not np.array_equal(example['label_mask'], np.arange(5) < annotated):
                raise ValueError(
                    f'SynthAVS clip {example["uid"]} ({split}) has label_mask '
                    f'{example["label_mask"]}; {protocol} needs {annotated} annotated frame(s) '
                    f'(set first_frame_only_share={1.0 if protocol == "s4" else 0.0}).')
            sounding = example['object_classes'][example['object_sounding']]
            category = names[int(sounding[0])] if protocol == 's4' else None
            clips.append(ObjectClip(name=example['uid'], split=split, frames=example['frames'],
                                    masks=example['labels'][:annotated] > 0,
                                    audio=example['audio'], category=category))
    return clips
