"""The report and the end-of-run table read as a person expects: counts are not scaled as
percentages, tasks are numbered from 1, unknown timings are dashes, and each qualitative
overlay names the class of every colour it shows, with titles that never run into each
other. (The workdir fixtures and the page parser are ``test_report.py``'s.)"""

from __future__ import annotations

import json
import os

import numpy as np
from matplotlib.colors import to_rgb

from jax_cavs.core import report
from jax_cavs.problems.cavs import report as cavs_report
from test_report import NAMES, _metrics, _overlays, _page, _write_json


def test_the_summary_table_keeps_counts_and_numbers_tasks_from_one(capsys):
    report.print_summary(_metrics(), "miou")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["cmr on 3-3 overlapped (all), miou (%)",
                         "task |   old |   new |   all",
                         "   1 |   -   |  62.0 |  61.5",
                         "   2 |  31.0 |  55.0 |  43.2",
                         "   3 |  25.0 |  49.0 |  33.1",
                         "num_tasks: 3",  # not 300.0
                         "average_accuracy (%): 33.1", "learning_accuracy (%): 55.3",
                         "forgetting (%): 32.0", "bwt (%): -32.0"]


def test_timings_from_before_the_split_are_dashes_and_titles_count_from_one(tmp_path):
    _write_json(str(tmp_path / "metrics.json"), _metrics())
    _write_json(str(tmp_path / "timings.json"), {"0": 12.5})  # the old one-number format
    _write_json(str(tmp_path / "memory" / "collisions_1.json"),
                {"task": 1, "classes": {"1": {"collisions": 3, "frequency": 1.0,
                                              "probability": 1.0}},
                 "top_pairs": [{"old": 1, "new": 4, "pixels": 9}]})
    page = _page(cavs_report.write_report(str(tmp_path), class_names=NAMES))
    rows = page.tables[0][1:]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert [row[-4:] for row in rows] == [["-"] * 4] * 3
    assert "Top collision pairs at task 2" in page.headings
    assert "Collision-based rehearsal, task 2" in page.headings
    fig = cavs_report.plot_per_class_iou(_metrics(), lambda c: NAMES[c])
    assert fig.axes[0].get_title() == "Per-class IoU after task 3"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "task 1", "task 2", "task 3"]


def test_overlays_name_every_colour_and_their_titles_do_not_overlap():
    examples = _overlays()
    examples[0]["title"] = "old classes: test clip 12345, frame 4, the longest title of all"
    examples[0]["pred"][0:3, 0:3] = 2  # a cat predicted beside the dog
    fig = cavs_report.plot_overlays(examples, lambda c: NAMES[c])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = np.array(fig.axes).reshape(len(examples), 4)
    expected = [[("dog (GT, pred)", 1), ("cat (pred)", 2), ("ignored", 255)],
                [("drum (GT)", 7), ("baby (pred)", 8), ("ignored", 255)]]
    for row, want in zip(axes, expected):
        legend = row[3].get_legend()
        got = [(text.get_text(), to_rgb(handle.get_facecolor()))
               for text, handle in zip(legend.get_texts(), legend.legend_handles)]
        assert got == [(text, tuple(cavs_report.PALETTE[c] / 255.0)) for text, c in want]
        boxes = [ax.title.get_window_extent(renderer) for ax in row[:3]]
        boxes.append(legend.get_window_extent(renderer))
        for i, box in enumerate(boxes):
            for other in boxes[i + 1:]:
                assert not box.overlaps(other)
    title = axes[0][0].get_title()  # wrapped to its panel
    assert title.replace("\n", " ") == examples[0]["title"]
    assert len(title.splitlines()) == 3 and max(map(len, title.splitlines())) <= 26
    assert [ax.get_title() for ax in axes[0][1:3]] == ["ground truth", "prediction"]


def test_a_report_rendered_from_a_run_lists_its_timings(tmp_path):
    timings = {"0": {"train": 258.0, "end_task": 0.4, "eval": 3.1, "total": 261.5}}
    metrics = _metrics()
    _write_json(str(tmp_path / "metrics.json"), metrics)
    _write_json(str(tmp_path / "timings.json"), timings)
    page = _page(cavs_report.write_report(str(tmp_path)))
    assert page.tables[0][1][-4:] == ["258.0", "0.4", "3.1", "261.5"]
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        assert json.load(f) == metrics  # the report reads, never rewrites, the results
