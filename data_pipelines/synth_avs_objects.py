"""The objects of SynthAVS scenes and their pixels (design/SYNTHETIC_AVS.md).

`SceneObject` is one object of a clip: its class, whether it sounds, its size, orientation and
straight-line trajectory, and the frames where it sounds. The functions here turn it into pixels:
its coordinates in its own rotated frame (`local_coords`), whether they fall inside its class's
shape (`inside_shape`), the texture that shades it and moves with it (`texture_pattern`), and
which of a clip's objects is on top at each pixel (`topmost`). Planning (silhouettes, occlusion,
visibility) and rendering (shading) in synth_avs_scenes.py both use them; they live apart from
the clip generator so that the per-object geometry can be read and tested on its own.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipelines import synth_avs_identities as ids_lib


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object of a clip. Pixel units; T = num_frames.

    class_id: its class (1..K). sounding: whether it is a sound source (silent ones are
    distractors, labelled background). radius, rotation: size (pixels) and orientation.
    start: float [2] centre (x, y) in frame 0; velocity: float [2] pixels per frame.
    active: bool [T], frames where it truly sounds; its pixels are labelled there.
    emitted: bool [T], frames where its sound is in the waveform.
    emitted_class: the class whose sound it emits (its own unless the clip is 'mismatched').
    """

    class_id: int
    sounding: bool
    radius: float
    rotation: float
    start: np.ndarray
    velocity: np.ndarray
    active: np.ndarray
    emitted: np.ndarray
    emitted_class: int

    def centres(self, num_frames: int) -> np.ndarray:
        """Centre (x, y) in each frame. float [T, 2]."""
        return self.start[None] + np.arange(num_frames)[:, None] * self.velocity[None]


def local_coords(obj: SceneObject, num_frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in the object's rotated frame, in radii. float [T, H, W] each."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    centres = obj.centres(num_frames).astype(np.float32)
    dx = grid[None, None, :] - centres[:, 0, None, None]
    dy = grid[None, :, None] - centres[:, 1, None, None]
    cos, sin = math.cos(obj.rotation), math.sin(obj.rotation)
    return (dx * cos + dy * sin) / obj.radius, (dy * cos - dx * sin) / obj.radius


def inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether local coordinates (in radii) fall inside the unit-radius shape. bool."""
    if shape == 'disc':
        return u * u + v * v <= 1.0
    if shape == 'square':
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == 'triangle':  # equilateral, inscribed in the unit circle
        return (v >= -0.5) & (math.sqrt(3.0) * np.abs(u) + v <= 1.0)
    if shape == 'ring':
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if shape == 'cross':
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == 'star':  # five rounded points
        return np.sqrt(u * u + v * v) <= 0.55 + 0.45 * np.cos(5.0 * np.arctan2(v, u))
    if shape == 'ellipse':
        return u * u + (v / 0.55) ** 2 <= 1.0
    if shape == 'bar':
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.32)
    raise ValueError(f'Unknown SynthAVS shape {shape!r}; expected one of {ids_lib.SHAPES}.')


def texture_pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float,
                    angle: float) -> np.ndarray:
    """Texture pattern in [-1, 1] in object coordinates (it moves with the object)."""
    if kind == 'plain':
        return np.zeros_like(u)
    if kind == 'stripes':
        return np.sin(2 * np.pi * (u * math.cos(angle) + v * math.sin(angle)) / period)
    if kind == 'checker':
        return np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))
    raise ValueError(f'Unknown SynthAVS texture {kind!r}; expected one of {ids_lib.TEXTURES}.')


def topmost(silhouettes: np.ndarray) -> np.ndarray:
    """Index of the last (topmost) object covering each pixel, -1 where none. int8 [T, H, W]."""
    top = np.full(silhouettes.shape[1:], -1, np.int8)
    for o in range(silhouettes.shape[0]):
        top[silhouettes[o]] = o
    return top
