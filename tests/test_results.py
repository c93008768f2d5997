"""Table aggregation (ifss.results) on hand-made metrics.json files, checked against hand sums."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ifss.errors import IfssError
from ifss.results import (
    harmonic_mean,
    load_metrics,
    per_class_frame,
    runs_frame,
    summary_frame,
    summary_markdown,
    write_tables,
)


def _metrics(tmp: Path, method, task, nshot, ishot, base, novel, num_steps=2, iou=None,
             label=None):
    step = num_steps - 1
    record = {
        "dataset": "synthetic", "task": task, "method": method, "base_method": "FT",
        "step": step, "num_steps": num_steps, "nshot": nshot, "ishot": ishot,
        "classes": ["background", "a", "b"], "class_ids": [0, 6, 1],
        "iou": iou if iou is not None else [0.9, base, novel], "num_base": 2,
        "miou_base": base, "miou_novel": novel, "miou_all": (base + novel) / 2,
        "hm": None, "pixel_accuracy": 0.9, "config": {}, "versions": {}, "seed": 42,
        "wall_time_s": 1.0, "iterations": 10, "device": "cpu",
    }
    if label:
        record["label"] = label
    path = tmp / task / (label or method) / f"s{nshot}-i{ishot}" / f"step{step}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def runs(tmp_path):
    """FT: SS 1-shot, 2 folds x 2 splits; MS 1-shot, 1 fold x 2 splits. WI: one SS 1-shot run."""
    paths = [
        _metrics(tmp_path, "FT", "5-0", 1, 0, 0.60, 0.10),
        _metrics(tmp_path, "FT", "5-0", 1, 1, 0.62, 0.20),
        _metrics(tmp_path, "FT", "5-1", 1, 0, 0.58, 0.30),
        _metrics(tmp_path, "FT", "5-1", 1, 1, 0.64, 0.00),
        _metrics(tmp_path, "FT", "5-0m", 1, 0, 0.50, 0.05, num_steps=6),
        _metrics(tmp_path, "FT", "5-0m", 1, 1, 0.40, 0.15, num_steps=6),
        _metrics(tmp_path, "WI", "5-0", 1, 0, 0.70, 0.20),
    ]
    return paths


def test_harmonic_mean():
    assert harmonic_mean(0.6, 0.2) == pytest.approx(2 * 0.6 * 0.2 / 0.8)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.5, None) is None


def test_summary_means_stds_and_hm_by_hand(runs):
    table = summary_frame(runs_frame(load_metrics(runs)), methods=["FT", "WI"], shots=[1])
    ss = lambda m, metric, stat: table.loc[m, ("SS", 1, metric, stat)]  # noqa: E731
    # FT SS 1-shot: B = 60, 62, 58, 64 -> mean 61, sample std sqrt(20/3); N = 10, 20, 30, 0 -> 15
    assert ss("FT", "mIoU-B", "mean") == pytest.approx(61.0)
    assert ss("FT", "mIoU-B", "std") == pytest.approx(math.sqrt((1 + 1 + 9 + 9) / 3))
    assert ss("FT", "mIoU-N", "mean") == pytest.approx(15.0)
    assert ss("FT", "mIoU-N", "std") == pytest.approx(math.sqrt((25 + 25 + 225 + 225) / 3))
    # HM of the means: 2*61*15/76; its std is the spread of per-run HMs
    assert ss("FT", "HM", "mean") == pytest.approx(2 * 61 * 15 / 76)
    pairs = ((60, 10), (62, 20), (58, 30), (64, 0))
    per_run = [2 * b * n / (b + n) if b + n else 0.0 for b, n in pairs]
    assert ss("FT", "HM", "std") == pytest.approx(pd.Series(per_run).std())
    assert table.loc["FT", ("SS", 1, "n", "")] == 4
    # MS uses the runs of multi-step tasks only
    assert table.loc["FT", ("MS", 1, "mIoU-B", "mean")] == pytest.approx(45.0)
    assert table.loc["FT", ("MS", 1, "mIoU-N", "mean")] == pytest.approx(10.0)
    assert table.loc["FT", ("MS", 1, "n", "")] == 2
    # one run: std undefined; no MS run of WI: empty cell, n = 0
    assert ss("WI", "mIoU-B", "mean") == pytest.approx(70.0)
    assert pd.isna(ss("WI", "mIoU-B", "std"))
    assert pd.isna(table.loc["WI", ("MS", 1, "mIoU-B", "mean")])
    assert table.loc["WI", ("MS", 1, "n", "")] == 0


def test_write_tables_files(runs, tmp_path):
    out = tmp_path / "tables"
    write_tables(runs, out / "t.csv", out / "t.md", out / "t_runs.csv", out / "t_per_class.csv",
                 methods=["WI", "FT"], shots=[1], title="Test")
    csv = pd.read_csv(out / "t.csv")
    assert list(csv["method"]) == ["WI", "FT"]  # the config's row order
    assert list(csv.columns[:4]) == ["method", "SS 1-shot mIoU-B mean", "SS 1-shot mIoU-B std",
                                     "SS 1-shot mIoU-N mean"]
    ft = csv.set_index("method").loc["FT"]
    assert ft["SS 1-shot mIoU-B mean"] == 61.0
    assert ft["SS 1-shot mIoU-B std"] == round(math.sqrt(20 / 3), 1)
    assert ft["SS 1-shot HM mean"] == round(2 * 61 * 15 / 76, 1)
    assert ft["SS 1-shot n"] == 4 and ft["MS 1-shot n"] == 2

    md = (out / "t.md").read_text()
    assert "| FT | 61.0 ± 2.6 | 15.0 ± 12.9 | 24.1 ± " in md
    assert "| WI | 70.0 | 20.0 | 31.1 | – | – | – |" in md

    long = pd.read_csv(out / "t_runs.csv")
    assert len(long) == 7 and set(long["setting"]) == {"SS", "MS"}
    row = long[(long["task"] == "5-1") & (long["ishot"] == 1)].iloc[0]
    assert row["mIoU-B"] == 64.0 and row["mIoU-N"] == 0.0 and row["HM"] == 0.0

    per_class = pd.read_csv(out / "t_per_class.csv")
    assert len(per_class) == 7 * 3
    first = per_class.iloc[:3]
    assert list(first["class"]) == ["background", "a", "b"]
    assert list(first["novel"]) == [False, False, True]


def test_a_variant_is_its_own_row(runs, tmp_path):
    """A run of a configured variant (metrics label) fills the variant's row, not its method's."""
    variant = _metrics(tmp_path, "FT", "5-0", 1, 0, 0.30, 0.40, label="FT-long")
    frame = runs_frame(load_metrics(runs + [variant]))
    assert list(frame.loc[frame["method"] == "FT-long", "registered_method"]) == ["FT"]
    table = summary_frame(frame, methods=["FT", "FT-long"], shots=[1])
    assert table.loc["FT", ("SS", 1, "n", "")] == 4  # unchanged by the variant's run
    assert table.loc["FT-long", ("SS", 1, "mIoU-N", "mean")] == pytest.approx(40.0)
    per_class = per_class_frame(load_metrics([variant]))
    assert set(per_class["method"]) == {"FT-long"}


def test_per_class_absent_class_stays_empty(tmp_path):
    path = _metrics(tmp_path, "FT", "5-0", 1, 0, 0.5, 0.1, iou=[0.9, None, 0.1])
    frame = per_class_frame(load_metrics([path]))
    assert pd.isna(frame.loc[1, "IoU"]) and frame.loc[2, "IoU"] == pytest.approx(10.0)


def test_markdown_has_header_and_note(runs):
    md = summary_markdown(summary_frame(runs_frame(load_metrics(runs))), "T")
    assert md.startswith("## T\n")
    assert "| Method | SS 1-shot mIoU-B | SS 1-shot mIoU-N | SS 1-shot HM | MS 1-shot mIoU-B" in md
    assert "HM = 2·B·N/(B+N) of the mean B and N" in md


def test_bad_metrics_file_is_named(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(IfssError, match=str(bad)):
        load_metrics([bad])
    bad.write_text(json.dumps({"dataset": "voc"}))
    with pytest.raises(IfssError, match="lacks task"):
        load_metrics([bad])
