"""Datasets by name: build on first use, random-access sources, and a per-split class index.

`load_dataset('synth_avs', 'small', data_dir)` imports `data_pipelines.synth_avs` (importing a
`data_pipelines.<name>` module registers its TFDS builder `<name>`; AVSBench-semantic plugs in
the same way), builds the dataset into `data_dir` the first time (array_record files; one
`[jax_cavs] Building ...` line instead of TFDS's "no dataset_info.json" warning, "Downloading
and preparing dataset" lines and progress bars: nothing is downloaded), and returns a frozen
`Dataset`:
- `sources[split]` for every split of the dataset (SynthAVS: 'train', 'test'; AVSBench-semantic
  adds 'val'): `tfds.data_source`-style random-access sequences of decoded records (what
  grain's `MapDataset.source` takes);
- `num_classes` (background included), `class_names`, `num_frames`, `image_size`, `metadata`
  (the builder's metadata.json; a builder must write class_names, num_frames, image_size);
- `index[split]`: a `SplitIndex` giving, for every record index, its ground-truth
  class set (union over annotated real frames, background and 255 excluded; spec_cavs.md §1.3
  builds the CI / CIS / CIM scenarios from it), consistency, corruption, subset and uid. It is
  computed once by decoding the split and cached as JSON beside the dataset files
  (`class_index_<split>.json`), so building scenarios never decodes frames again.
`overrides` replace fields of a named builder config (e.g. `{'seed': 3}`); the variant is stored
under its own config name `<config>_custom_<hash>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import os
import pkgutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging

from jax_cavs.data import IGNORE_INDEX

_INDEX_FORMAT = 1
_INDEX_FIELDS = ('uid', 'classes', 'consistency', 'corruption', 'subset')
_REQUIRED_METADATA = ('class_names', 'num_frames', 'image_size')


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """Per-record facts of one split, in record-index order. N = number of records.

    uid: clip names. classes: sorted ground-truth classes of each record (annotated real
    frames, background and ignore excluded). consistency: float32 [N] true audio-visual
    consistency (NaN where the dataset does not know it). corruption, subset: the records'
    fields ('unknown' where the dataset has none).
    """

    uid: tuple[str, ...]
    classes: tuple[tuple[int, ...], ...]
    consistency: np.ndarray
    corruption: tuple[str, ...]
    subset: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.uid)

    def presence(self, num_classes: int) -> np.ndarray:
        """Multi-hot class presence, bool [N, num_classes] (column 0, background, stays False)."""
        out = np.zeros((len(self), num_classes), bool)
        for i, classes in enumerate(self.classes):
            out[i, list(classes)] = True
        return out

    def to_json(self) -> dict:
        return {'format': _INDEX_FORMAT, 'uid': list(self.uid),
                'classes': [list(c) for c in self.classes],
                'consistency': [None if np.isnan(x) else float(x) for x in self.consistency],
                'corruption': list(self.corruption), 'subset': list(self.subset)}

    @classmethod
    def from_json(cls, data: dict, num_records: int, num_classes: int) -> 'SplitIndex':
        """Parses and validates a cached index; raises ValueError saying what is wrong."""
        if not isinstance(data, dict) or data.get('format') != _INDEX_FORMAT:
            raise ValueError(f'expected a JSON object with "format": {_INDEX_FORMAT}')
        for field in _INDEX_FIELDS:
            if not isinstance(data.get(field), list) or len(data[field]) != num_records:
                raise ValueError(f'field {field!r} must be a list of {num_records} entries (one '
                                 'per record of the split)')
        classes = []
        for i, entry in enumerate(data['classes']):
            if (not isinstance(entry, list) or entry != sorted(set(entry))
                    or not all(isinstance(c, int) and 0 < c < num_classes for c in entry)):
                raise ValueError(f'classes[{i}]={entry!r} is not a sorted list of distinct class '
                                 f'ids in 1..{num_classes - 1}')
            classes.append(tuple(entry))
        consistency = np.array([np.nan if x is None else x for x in data['consistency']],
                               np.float32)
        return cls(uid=tuple(map(str, data['uid'])), classes=tuple(classes),
                   consistency=consistency, corruption=tuple(map(str, data['corruption'])),
                   subset=tuple(map(str, data['subset'])))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A built dataset: sources, class facts and per-split class indices (see module doc)."""

    name: str
    config: str
    data_path: str
    sources: Mapping[str, Sequence[dict]]
    num_classes: int
    class_names: tuple[str, ...]
    num_frames: int
    image_size: int | None
    metadata: dict
    index: Mapping[str, SplitIndex]


def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def record_classes(record: Mapping) -> tuple[int, ...]:
    """Ground-truth class set of a decoded record: sorted label values of its annotated real
    frames (`label_mask & frame_mask`), background (0) and ignore (255) excluded."""
    labels = np.asarray(record['labels'])
    frames = np.asarray(record['label_mask'], bool) & np.asarray(record['frame_mask'], bool)
    values = np.unique(labels[frames])
    return tuple(int(c) for c in values if c not in (0, IGNORE_INDEX))


def build_class_index(source: Sequence[Mapping], description: str = 'class index') -> SplitIndex:
    """Decodes every record of `source` once and collects its `SplitIndex` entries."""
    uid, classes, consistency, corruption, subset = [], [], [], [], []
    for i in tqdm.trange(len(source), desc=description, unit='clip', file=sys.stderr,
                         leave=False):
        record = source[i]
        uid.append(_text(record['uid'], ''))
        classes.append(record_classes(record))
        consistency.append(float(record['consistency']) if 'consistency' in record else np.nan)
        corruption.append(_text(record.get('corruption'), 'unknown'))
        subset.append(_text(record.get('subset'), 'unknown'))
    return SplitIndex(uid=tuple(uid), classes=tuple(classes),
                      consistency=np.array(consistency, np.float32),
                      corruption=tuple(corruption), subset=tuple(subset))


def _dataset_modules() -> list[str]:
    """Names of the modules under data_pipelines/ (for the unknown-dataset message)."""
    import data_pipelines  # pylint: disable=import-outside-toplevel
    return sorted(m.name for m in pkgutil.iter_modules(data_pipelines.__path__))


def builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
    """The TFDS builder class registered by importing `data_pipelines.<name>`."""
    module = f'data_pipelines.{name}'
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise ValueError(f'Unknown dataset {name!r}: there is no module {module}. Modules under '
                         f'data_pipelines/: {_dataset_modules()}.') from None
    try:
        return tfds.builder_cls(name)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f'Module {module} does not register a TFDS builder named {name!r}; '
                         f'its builder class must set `name = {name!r}`.') from None


def _config_with_overrides(builder_cls, config: str, overrides: Mapping | None):
    configs = builder_cls.builder_configs
    if config not in configs:
        raise ValueError(f'Unknown config {config!r} of dataset {builder_cls.name!r}; '
                         f'available: {sorted(configs)}.')
    base = configs[config]
    if not overrides:
        return base
    tfds_fields = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    fields = {f.name for f in dataclasses.fields(base)} - tfds_fields
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f'Unknown override(s) {unknown} for {builder_cls.name}/{config}; '
                         f'valid fields: {sorted(fields)}.')
    digest = hashlib.sha1(json.dumps(dict(overrides), sort_keys=True, default=str).encode())
    try:
        return dataclasses.replace(
            base, name=f'{config}_custom_{digest.hexdigest()[:10]}',
            description=f'{config} with overrides {dict(overrides)}', **overrides)
    except (TypeError, ValueError) as err:
        raise ValueError(f'Invalid overrides {dict(overrides)} for {builder_cls.name}/{config}: '
                         f'{err}') from err


def _ensure_writable(directory: str, what: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise ValueError(f'Cannot create data_dir {directory!r} to store {what} ({err}); pass a '
                         'writable data_dir.') from err
    if not os.access(directory, os.W_OK):
        raise ValueError(f'data_dir {directory!r} is not writable, so {what} cannot be stored '
                         'there; pass a writable data_dir (or build it elsewhere and copy it).')


def _load_or_build_index(path: str, source: Sequence, num_classes: int,
                         description: str) -> SplitIndex:
    if os.path.exists(path):
        try:
            with open(path, encoding='utf-8') as f:
                return SplitIndex.from_json(json.load(f), len(source), num_classes)
        except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            raise ValueError(f'Class index cache {path} is corrupted or stale ({err}). Delete the '
                             'file; the next load_dataset call rebuilds it.') from err
    _ensure_writable(os.path.dirname(path), f'the class index {os.path.basename(path)}')
    index = build_class_index(source, description)
    with tempfile.NamedTemporaryFile('w', dir=os.path.dirname(path), suffix='.tmp',
                                     delete=False, encoding='utf-8') as f:
        json.dump(index.to_json(), f)
    os.chmod(f.name, 0o644)  # NamedTemporaryFile creates 0600; the dataset files are 0644
    os.replace(f.name, path)
    return index


@contextlib.contextmanager
def _quiet_tfds():
    """Silences TFDS while it looks for and builds a dataset: its absl warnings (a variant
    folder "has no dataset_info.json" before the first build), its lines on stdout
    ("Downloading and preparing dataset Unknown size ...", "... Subsequent calls will reuse
    this data.") and its progress bars. Errors still raise."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)
        logging.set_verbosity(verbosity)


def load_dataset(name: str, config: str, data_dir: str, *,
                 overrides: Mapping | None = None) -> Dataset:
    """Loads dataset `name`/`config` from `data_dir`, building it and its class index on first use.

    Args:
      name: dataset module under data_pipelines/ (e.g. 'synth_avs').
      config: a builder config name of that dataset (e.g. 'tiny', 'small', 'avs70').
      data_dir: TFDS data directory (created if missing; must be writable until built).
      overrides: optional replacements for fields of the named config (e.g. {'seed': 1}).
    Returns:
      A `Dataset` (see the module docstring).
    """
    builder_cls = builder_class(name)
    builder_config = _config_with_overrides(builder_cls, config, overrides)
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    # A registered config is passed by name: data sources are pickled into grain's worker
    # processes, and tfds refuses to rebuild a registered config from a pickled object.
    label = f'{name}/{builder_config.name}'
    with _quiet_tfds():
        builder = builder_cls(config=builder_config.name if not overrides else builder_config,
                              data_dir=data_dir, file_format='array_record')
        prepared = builder.is_prepared()
    if not prepared:
        _ensure_writable(data_dir, f'dataset {label}')
        print(f'[jax_cavs] Building {label} into {builder.data_path} (first use; later loads '
              'reuse it)...', end='', file=sys.stderr, flush=True)
        start, outcome = time.time(), 'failed'
        try:
            with _quiet_tfds():
                builder.download_and_prepare(file_format='array_record')
            outcome = 'done'
        finally:  # ends the line (a failure's message follows on the next one)
            print(f' {outcome} in {time.time() - start:.1f} s.', file=sys.stderr, flush=True)
    metadata = dict(builder.info.metadata or {})
    missing = [k for k in _REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f'Dataset {label} at {builder.data_path} lacks metadata {missing}; its '
                         'builder must store them in info.metadata (a tfds MetadataDict).')
    class_names = tuple(metadata['class_names'])
    splits = sorted(builder.info.splits)
    sources = {split: builder.as_data_source(split) for split in splits}
    index = {split: _load_or_build_index(
                 os.path.join(builder.data_path, f'class_index_{split}.json'), sources[split],
                 len(class_names), f'Indexing {label} {split}')
             for split in splits}
    return Dataset(name=name, config=builder_config.name, data_path=os.fspath(builder.data_path),
                   sources=sources, num_classes=len(class_names), class_names=class_names,
                   num_frames=int(metadata['num_frames']), image_size=metadata['image_size'],
                   metadata=metadata, index=index)
