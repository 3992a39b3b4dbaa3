"""Tests of the run report (``core.report`` with CAVS's panels, ``problems/cavs/report.py``,
and the ``python -m jax_cavs.report`` re-render) on a small hand-written workdir."""

from __future__ import annotations

import glob
import html.parser
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jax_cavs.core import report
from jax_cavs.problems.cavs import report as cavs_report

GROUPS = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
NAMES = ["background", "dog", "cat", "guitar", "piano", "car", "bell", "drum", "baby", "horse"]
# null above the diagonal: group j is not evaluated before task j (metrics.json's format).
MATRIX = [[0.62, None, None], [0.31, 0.55, None], [0.22, 0.28, 0.49]]
MIOU = [{"old": None, "new": 0.62, "all": 0.615},
        {"old": 0.31, "new": 0.55, "all": 0.4321},
        {"old": 0.25, "new": 0.49, "all": 0.3312}]
SUMMARY = {"num_tasks": 3, "average_accuracy": 0.3312, "learning_accuracy": 0.5533,
           "forgetting": 0.32, "bwt": -0.32}  # no fwt: undefined when nothing is zero-shot
# Per-class IoU after the last task; class 5 is absent from the test ground truth.
LAST_IOU = [0.9, 0.3, 0.2, 0.25, 0.35, None, 0.21, 0.6, 0.45, 0.42]
CONFIG = {"seed": 3, "strategy": {"name": "cmr", "memory_per_class": 5}, "note": "<a&b>"}
# timings.json as core.outputs writes it (seconds per part of each task, 0-based keys).
TIMINGS = {str(t): {"train": 40.5 + t, "end_task": 7.25, "eval": 1.5, "total": 49.25 + t}
           for t in range(len(MIOU))}

# Pixel sizes follow from report.DPI = 100 and the figure sizes in inches:
# accuracy matrix 6x5, mIoU per task 7x4, bar charts max(7, 1.5 + 0.22 * bars) x 4.5
# (collisions: x 5), overlays 9 x (2.6 * examples), MSS histogram 6x4.
BASE_IMAGES = {"accuracy_matrix.png": (600, 500), "miou_per_task.png": (700, 400),
               "per_class_iou.png": (700, 450)}
CMR_IMAGES = {"overlays.png": (900, 520), "collisions_1.png": (700, 500),
              "collisions_2.png": (700, 500), "mss_scores_0.png": (600, 400),
              "mss_scores_1.png": (600, 400)}


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)


def _metrics():
    rng = np.random.default_rng(0)
    tasks = []
    for t, miou in enumerate(MIOU):
        seen = {0, *[c for g in GROUPS[:t + 1] for c in g]}
        iou = LAST_IOU if t == 2 else [float(rng.uniform(0.1, 0.9)) if c in seen else None
                                       for c in range(10)]
        tasks.append({"task": t, "classes": GROUPS[t], "miou": miou, "per_class_iou": iou})
    return {"method": "cmr", "problem": "cavs", "headline": "miou",
            "scenario": {"split": "3-3", "mode": "overlapped", "subset": "all",
                         "class_order": list(range(1, 10)), "groups": GROUPS},
            "tasks": tasks, "accuracy_matrix": MATRIX, "summary": SUMMARY}


def _selection(t, with_scored, rng):
    def records(n):
        av, v = rng.uniform(0.2, 0.8, n), rng.uniform(0.2, 0.8, n)
        return [{"id": int(i), "av": float(a), "v": float(b), "deviation": float(a - b)}
                for i, a, b in zip(rng.integers(0, 100, n), av, v)]
    return {"task": t, "classes": {str(c): {"selected": records(5),
                                            **({"scored": records(20)} if with_scored else {})}
                                   for c in GROUPS[t]}}


def _collisions(t):
    old = [c for g in GROUPS[:t] for c in g]
    return {"task": t,
            "classes": {str(c): {"collisions": 10 * c, "frequency": float(1 + c % 3),
                                 "probability": 1.0 / len(old)} for c in old},
            "top_pairs": [{"old": old[0], "new": GROUPS[t][0], "pixels": 1042},
                          {"old": old[-1], "new": GROUPS[t][1], "pixels": 77}]}


def _overlays():
    """Two 24x32 examples: a gradient frame, a GT rectangle and a shifted prediction."""
    frame = np.stack([*np.meshgrid(np.linspace(0, 255, 32), np.linspace(0, 255, 24)),
                      np.full((24, 32), 90.0)], -1).astype(np.uint8)
    examples = []
    for title, (gt_class, pred_class) in (("old class: dog", (1, 1)),
                                          ("new class: drum", (7, 8))):
        label = np.zeros((24, 32), np.int32)
        label[4:14, 6:20] = gt_class
        label[0, :] = 255
        pred = np.zeros((24, 32), np.int32)
        pred[6:16, 8:22] = pred_class
        examples.append({"frame": frame, "label": label, "pred": pred, "title": title})
    return examples


@pytest.fixture
def base_workdir(tmp_path):
    """A workdir holding only metrics.json."""
    _write_json(str(tmp_path / "metrics.json"), _metrics())
    return str(tmp_path)


@pytest.fixture
def cmr_workdir(base_workdir):
    """metrics.json plus config.json, timings.json and CMR memory files (task 1 without
    scored videos)."""
    rng = np.random.default_rng(1)
    _write_json(os.path.join(base_workdir, "config.json"), CONFIG)
    _write_json(os.path.join(base_workdir, "timings.json"), TIMINGS)
    for t, with_scored in ((0, True), (1, False)):
        _write_json(os.path.join(base_workdir, "memory", f"task_{t}.json"),
                    _selection(t, with_scored, rng))
    for t in (1, 2):
        _write_json(os.path.join(base_workdir, "memory", f"collisions_{t}.json"), _collisions(t))
    return base_workdir


class _Page(html.parser.HTMLParser):
    """Collects the image sources, headings, tables (lists of rows of cell texts, header row
    included) and preformatted text of index.html, with entities decoded."""

    def __init__(self, text):
        super().__init__()
        self.images, self.headings, self.tables, self.pre, self._tag = [], [], [], "", None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])

    def handle_data(self, data):
        if self._tag in ("td", "th"):
            self.tables[-1][-1].append(data)
        elif self._tag == "h2":
            self.headings.append(data)
        elif self._tag == "pre":
            self.pre += data

    def handle_endtag(self, tag):
        self._tag = None


def _page(index_path):
    with open(index_path, encoding="utf-8") as f:
        return _Page(f.read())


def _report_files(workdir):
    directory = os.path.join(workdir, "report")
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory))}


def test_every_referenced_image_exists_with_expected_size_and_content(cmr_workdir):
    index = cavs_report.write_report(cmr_workdir, class_names=NAMES, overlays=_overlays())
    page = _page(index)
    expected = {**BASE_IMAGES, **CMR_IMAGES}
    assert sorted(page.images) == sorted(expected)
    for src in page.images:
        with Image.open(os.path.join(os.path.dirname(index), src)) as image:
            assert image.format == "PNG"
            assert image.size == expected[src], src
            assert np.asarray(image.convert("RGB"), np.float64).std() > 0, src


def _percent(value):
    return "–" if value is None else f"{100 * value:.1f}"


def test_html_tables_hold_the_metrics(cmr_workdir):
    index = cavs_report.write_report(cmr_workdir, class_names=NAMES, overlays=_overlays())
    page = _page(index)
    per_task, summary, pairs_1, pairs_2 = page.tables
    assert per_task[0] == ["task", "classes", "old", "new", "all", "train (s)",
                           "end of task (s)", "eval (s)", "total (s)"]
    # Tasks numbered from 1; the seconds split into training, end of task and evaluation.
    assert per_task[1:] == [[str(t + 1), ", ".join(NAMES[c] for c in GROUPS[t]),
                             *(_percent(miou[k]) for k in ("old", "new", "all")),
                             str(40.5 + t), "7.25", "1.5", str(49.25 + t)]
                            for t, miou in enumerate(MIOU)]
    assert per_task[2][2:5] == ["31.0", "55.0", "43.2"]  # by hand, 0.4321 -> 43.2
    # The count is shown as it is (not 300.0), the fractions as percentages.
    assert summary == [["num_tasks", "average_accuracy (%)", "learning_accuracy (%)",
                        "forgetting (%)", "bwt (%)"], ["3", "33.1", "55.3", "32.0", "-32.0"]]
    assert pairs_1[1:] == [["dog", "piano", "1042"], ["guitar", "car", "77"]]
    assert pairs_2[1:] == [["dog", "drum", "1042"], ["bell", "baby", "77"]]
    assert json.loads(page.pre) == CONFIG  # shown verbatim, "<a&b>" escaped and decoded


def test_missing_optional_inputs_are_omitted(base_workdir):
    index = cavs_report.write_report(base_workdir)
    page = _page(index)
    assert sorted(page.images) == sorted(BASE_IMAGES)
    assert sorted(os.listdir(os.path.dirname(index))) == sorted([*BASE_IMAGES, "index.html"])
    assert "Config" not in page.headings and not page.pre
    assert not any(h.startswith("Top collision pairs") for h in page.headings)
    assert [row[1] for row in page.tables[0][1:]] == ["1, 2, 3", "4, 5, 6", "7, 8, 9"]
    assert len(page.tables) == 2  # per-task mIoU and the CL summary


def test_rendering_twice_is_idempotent(cmr_workdir):
    cavs_report.write_report(cmr_workdir, class_names=NAMES, overlays=_overlays())
    first = _report_files(cmr_workdir)
    cavs_report.write_report(cmr_workdir, class_names=NAMES, overlays=_overlays())
    assert _report_files(cmr_workdir) == first
    assert not glob.glob(os.path.join(cmr_workdir, "report.*"))


def test_command_line_rerender_keeps_names_and_overlays(cmr_workdir):
    cavs_report.write_report(cmr_workdir, class_names=NAMES, overlays=_overlays())
    first = _report_files(cmr_workdir)
    os.remove(os.path.join(cmr_workdir, "memory", "collisions_2.json"))
    subprocess.run([sys.executable, "-m", "jax_cavs.report", cmr_workdir], check=True,
                   capture_output=True)
    second = _report_files(cmr_workdir)
    assert "collisions_2.png" not in second
    for name in ("overlays.png", "overlays.npz", "class_names.json", "per_class_iou.png"):
        assert second[name] == first[name], name
    cavs_report.write_report(cmr_workdir, overlays=[])
    assert "overlays.png" not in _report_files(cmr_workdir)


def test_accuracy_matrix_marks_undefined_entries():
    fig = report.plot_accuracy_matrix(_metrics())
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
             for t in fig.axes[0].texts}
    assert cells == {(0, 0): "62.0", (0, 1): "–", (0, 2): "–", (1, 0): "31.0",
                     (1, 1): "55.0", (1, 2): "–", (2, 0): "22.0", (2, 1): "28.0",
                     (2, 2): "49.0"}
    # The heatmap's data leave the unlearned cells out (masked, drawn blank), not 0.0.
    (image,) = fig.axes[0].images
    data = image.get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(data),
                                  [[False, True, True], [False, False, True], [False] * 3])
    np.testing.assert_allclose(data.compressed(), [62.0, 31.0, 55.0, 22.0, 28.0, 49.0])
    # Rows and columns are the tasks as a person counts them.
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "3"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["1", "2", "3"]


def test_voc_palette_and_blend_by_hand():
    palette = cavs_report.voc_palette()
    np.testing.assert_array_equal(palette[[0, 1, 2, 3, 255]],
                                  [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                   [224, 224, 192]])
    frame = np.array([[[100, 50, 0], [100, 50, 0], [100, 50, 0]]], np.uint8)
    mask = np.array([[0, 1, 255]])
    # alpha 0.5: (frame + colour) / 2, rounded half to even; background pixel untouched.
    np.testing.assert_array_equal(cavs_report.blend_mask(frame, mask, alpha=0.5),
                                  [[[100, 50, 0], [114, 25, 0], [162, 137, 96]]])


def test_bad_inputs_name_the_culprit(tmp_path, base_workdir):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        cavs_report.write_report(str(tmp_path / "nowhere"))
    bad = _overlays()
    bad[1]["pred"] = bad[1]["pred"][:, :-1]
    with pytest.raises(ValueError, match=r"overlays\[1\]\.pred has shape"):
        cavs_report.write_report(base_workdir, overlays=bad)
    with pytest.raises(ValueError, match="class_names has 3 entries"):
        cavs_report.write_report(base_workdir, class_names=NAMES[:3])
    assert not os.path.exists(os.path.join(base_workdir, "report"))


def _read_events(logdir):
    """(tag, step, value) of every scalar in the event files (TFRecord framing: u64 length,
    u32 crc, payload, u32 crc)."""
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            found += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return found


def test_scalar_writer_logs_tensorboard_scalars(tmp_path):
    writer = report.ScalarWriter(str(tmp_path))
    writer.scalars(1, {"train/ce": 0.75, "lr": np.float32(1e-4), "eval/miou_old": None})
    writer.scalars(2, {"train/ce": 0.5})
    writer.close()
    assert writer.logdir == str(tmp_path / "tensorboard")
    events = _read_events(writer.logdir)
    assert [(tag, step) for tag, step, _ in events] == [("train/ce", 1), ("lr", 1),
                                                        ("train/ce", 2)]
    np.testing.assert_allclose([v for _, _, v in events], [0.75, 1e-4, 0.5], rtol=1e-7)


def test_benchmark_tables_print_a_dash_for_undefined_values(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                             "benchmarks"))
    import cmr_ablation  # pylint: disable=import-outside-toplevel
    import compare_methods  # pylint: disable=import-outside-toplevel
    one_task = dict(_metrics(), tasks=_metrics()["tasks"][:1], accuracy_matrix=[[0.62, None]])
    one_task["summary"] = {"num_tasks": 1, "average_accuracy": 0.62, "learning_accuracy": 0.62}
    no_summary = {k: v for k, v in one_task.items() if k != "summary"}
    lines = compare_methods.table("overlapped", {"a": {"metrics": one_task, "note": ""},
                                                 "b": {"metrics": no_summary, "note": ""}})
    rows = [line for line in lines.splitlines() if line.startswith(("| a ", "| b "))]
    assert rows == ["| a | - | 62.0 | 61.5 | 62.0 | - | - |  |",
                    "| b | - | 62.0 | 61.5 | - | - | - |  |"]
    assert cmr_ablation.cell([None, float("nan")]) == "-"
    assert cmr_ablation.cell([None, 0.25]) == "25.0"
