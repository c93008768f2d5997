"""Continual tables and per-step figures (ifss.continual_results) on hand-made metrics.json files,
checked against hand-computed values."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ifss.continual_results import (
    continual_runs_frame,
    continual_summary,
    per_step_frame,
    write_continual_tables,
    write_per_step,
)
from ifss.errors import IfssError
from ifss.results import load_metrics


def _metrics(tmp: Path, method, task, protocol, old, new, num_steps=2, step=None, label=None,
             all_=None, iou=None):
    step = num_steps - 1 if step is None else step
    record = {
        "dataset": "synthetic", "task": task, "method": method, "base_method": "FT",
        "step": step, "num_steps": num_steps, "nshot": 5, "ishot": 0,
        "classes": ["background", "a", "b"], "class_ids": [0, 1, 16],
        "iou": iou if iou is not None else [0.9, old, new], "num_base": 2,
        "miou_base": old, "miou_novel": new,
        "miou_all": all_ if all_ is not None else (old + (new or 0)) / 2,
        "hm": None, "pixel_accuracy": 0.8, "seed": 42, "wall_time_s": 1.0, "iterations": 40,
        "device": "cpu", "config": {"data": {"protocol": protocol}}, "versions": {},
    }
    if label:
        record["label"] = label
    folder = tmp / task / protocol / (label or method) / f"step{step}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder / "metrics.json"


@pytest.fixture
def runs(tmp_path):
    """FT and MIB on 15-5 (disjoint, overlap) and 15-1 (disjoint); a variant MIB-kd on 15-5."""
    return [
        _metrics(tmp_path, "FT", "15-5", "disjoint", 0.40, 0.30, all_=0.36),
        _metrics(tmp_path, "FT", "15-5", "overlap", 0.45, 0.35, all_=0.41),
        _metrics(tmp_path, "FT", "15-1", "disjoint", 0.05, 0.10, num_steps=6, all_=0.062),
        _metrics(tmp_path, "MIB", "15-5", "disjoint", 0.70, 0.40, all_=0.625),
        _metrics(tmp_path, "MIB", "15-5", "overlap", 0.72, 0.45, all_=0.6525),
        _metrics(tmp_path, "MIB", "15-1", "disjoint", 0.46, 0.12, num_steps=6, all_=0.379),
        _metrics(tmp_path, "MIB", "15-5", "disjoint", 0.60, 0.20, label="MIB-kd", all_=0.5),
    ]


def test_summary_columns_are_task_protocol_old_new_all(runs):
    frame = continual_runs_frame(load_metrics(runs))
    assert list(frame["protocol"]) == ["disjoint", "overlap", "disjoint"] * 2 + ["disjoint"]
    table = continual_summary(frame, methods=["MIB", "FT", "MIB-kd"], tasks=["15-5", "15-1"],
                              protocols=["disjoint", "overlap"])
    assert list(table.index) == ["MIB", "FT", "MIB-kd"]  # the config's order
    # 15-1 overlap has no runs: no column; the rest in task x protocol x metric order
    assert list(table.columns) == [
        ("15-5", "disjoint", "old"), ("15-5", "disjoint", "new"), ("15-5", "disjoint", "all"),
        ("15-5", "overlap", "old"), ("15-5", "overlap", "new"), ("15-5", "overlap", "all"),
        ("15-1", "disjoint", "old"), ("15-1", "disjoint", "new"), ("15-1", "disjoint", "all")]
    assert table.loc["MIB", ("15-5", "overlap", "old")] == pytest.approx(72.0)
    assert table.loc["FT", ("15-1", "disjoint", "all")] == pytest.approx(6.2)
    assert table.loc["MIB-kd", ("15-5", "disjoint", "new")] == pytest.approx(20.0)  # own row
    assert table.loc["MIB", ("15-5", "disjoint", "new")] == pytest.approx(40.0)  # not averaged
    assert pd.isna(table.loc["MIB-kd", ("15-1", "disjoint", "old")])
    # a method without runs has no row
    assert "ILT" not in continual_summary(frame, methods=["FT", "ILT"]).index


def test_write_continual_tables(runs, tmp_path):
    out = tmp_path / "tables"
    write_continual_tables(runs, out / "t.csv", out / "t.md", out / "t_runs.csv",
                           out / "t_per_class.csv", methods=["FT", "MIB", "MIB-kd"],
                           tasks=["15-5", "15-1"], protocols=["disjoint", "overlap"], title="CSS")
    csv = pd.read_csv(out / "t.csv").set_index("method")
    assert list(csv.columns[:4]) == ["15-5 disjoint old", "15-5 disjoint new",
                                     "15-5 disjoint all", "15-5 overlap old"]
    assert csv.loc["MIB", "15-5 disjoint all"] == 62.5  # rounded to one decimal
    assert csv.loc["MIB", "15-1 disjoint old"] == 46.0 and csv.loc["FT", "15-1 disjoint new"] == 10
    md = (out / "t.md").read_text()
    assert md.startswith("## CSS\n")
    assert "| Method | 15-5 disjoint old | 15-5 disjoint new | 15-5 disjoint all |" in md
    assert "| MIB | 70.0 | 40.0 | 62.5 | 72.0 | 45.0 | 65.2 | 46.0 | 12.0 | 37.9 |" in md
    assert "| MIB-kd | 60.0 | 20.0 | 50.0 | – | – | – | – | – | – |" in md
    assert "old = background and the step-0 classes" in md
    long = pd.read_csv(out / "t_runs.csv")
    assert len(long) == 7 and set(long["protocol"]) == {"disjoint", "overlap"}
    assert {"old", "new", "all"} <= set(long.columns) and "nshot" not in long.columns
    per_class = pd.read_csv(out / "t_per_class.csv")
    assert len(per_class) == 7 * 3 and "nshot" not in per_class.columns
    assert list(per_class["new"][:3]) == [False, False, True]
    assert list(per_class["protocol"][:3]) == ["disjoint"] * 3


def test_a_few_shot_run_is_refused(tmp_path):
    path = _metrics(tmp_path, "FT", "15-5", "fewshot", 0.5, 0.1)
    with pytest.raises(IfssError, match="is a few-shot run"):
        write_continual_tables([path], *(tmp_path / f for f in ("a.csv", "a.md", "b", "c")))


def test_per_step_frame_and_figure(tmp_path):
    runs = {m: [_metrics(tmp_path / m, m, "15-1", "disjoint", old, new, num_steps=6, step=k)
                for k, (old, new) in enumerate(steps)]
            for m, steps in {"FT": [(0.8, None), (0.5, 0.3), (0.1, 0.2)],
                             "MIB": [(0.8, None), (0.7, 0.35), (0.6, 0.3)]}.items()}
    frame = per_step_frame(runs)
    assert list(frame["method"]) == ["FT"] * 3 + ["MIB"] * 3
    assert list(frame["step"]) == [0, 1, 2] * 2
    assert frame.loc[0, "all"] == pytest.approx(40.0) and pd.isna(frame.loc[0, "new"])
    assert frame.loc[5, "old"] == pytest.approx(60.0)
    write_per_step(runs, tmp_path / "fig" / "per_step.png", tmp_path / "fig" / "per_step.csv", "T")
    from PIL import Image

    with Image.open(tmp_path / "fig" / "per_step.png") as png:
        assert png.width > 300 and png.height > 200
    assert len(pd.read_csv(tmp_path / "fig" / "per_step.csv")) == 6
    runs["FT"] = runs["FT"][1:]  # steps out of order are named
    with pytest.raises(IfssError, match="is step 1, expected step 0 of FT's runs"):
        per_step_frame(runs)
