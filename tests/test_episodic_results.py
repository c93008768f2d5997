"""Episodic tables and paired differences: hand-written metrics.json files in, the table's
numbers out (ifss.episodic_results, ifss.paired_delta, the few-shot tables' `delta`)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from ifss.episodic_results import write_episodic_tables
from ifss.errors import IfssError
from ifss.paired_delta import paired_delta, signed
from ifss.results import runs_frame, summary_frame, summary_markdown


def test_paired_delta_takes_differences_within_pairs():
    frame = pd.DataFrame({
        "row": ["A", "A", "A", "B", "B", "B", "C"],
        "fold": [0, 1, 2, 0, 1, 2, 0],
        "v": [50.0, 60.0, 40.0, 52.0, 61.0, 43.0, 49.0],
    })
    out = paired_delta(frame, "row", "A", ["fold"], "v")
    assert out.loc["B", "delta"] == pytest.approx(2.0)  # (2 + 1 + 3) / 3
    assert out.loc["B", "sd"] == pytest.approx(1.0)  # sample std of 2, 1, 3
    assert out.loc["B", "pairs"] == 3
    assert out.loc["C", "delta"] == pytest.approx(-1.0) and out.loc["C", "pairs"] == 1
    assert pd.isna(out.loc["C", "sd"])  # one pair: no spread
    # the unpaired difference of the means would say B - A = 2 too, but C's -1 vs A's mean 50
    assert "A" not in out.index
    assert signed(2.6) == "+2.6" and signed(-0.05) == "-0.1" and signed(None) == ""


def write_eval(path, task, method, nshot, head, gamma, novel, base, fb):
    path.mkdir(parents=True, exist_ok=True)
    record = {"protocol": "episodic", "dataset": "voc", "task": task, "method": method,
              "nshot": nshot, "head": head, "gamma": gamma, "miou_novel": novel,
              "miou_base": base, "fb_iou": fb, "episodes": 100, "runs": 1,
              "per_class_novel": {"cat": novel},
              "per_class_base": {"dog": base} if base is not None else {}}
    (path / "metrics.json").write_text(json.dumps(record))
    return path / "metrics.json"


def test_episodic_table_values_means_and_deltas(tmp_path):
    files = []
    values = {  # (fold, gamma) -> (novel, base)
        ("5-0", 0.0): (0.311, 0.523), ("5-1", 0.0): (0.375, 0.438),
        ("5-0", 10.0): (0.310, 0.550), ("5-1", 10.0): (0.372, 0.457),
    }
    for (fold, gamma), (novel, base) in values.items():
        files.append(write_eval(tmp_path / f"{fold}-{gamma}", fold, "PSP", 1, "generalized",
                                gamma, novel, base, 0.6))
    files.append(write_eval(tmp_path / "bin-5-0", "5-0", "PSP", 1, "binary", 0.0, 0.30, None,
                            0.5))
    files.append(write_eval(tmp_path / "bin-5-1", "5-1", "PSP", 1, "binary", 0.0, 0.33, None,
                            0.5))
    rows = {"g0": {"backbone": "PSP", "head": "generalized", "gamma": 0.0},
            "g10": {"backbone": "PSP", "head": "generalized", "gamma": 10.0},
            "2-way": {"backbone": "PSP", "head": "binary"}}
    out = {k: tmp_path / f"t.{k}" for k in ("csv", "md", "runs", "pc")}
    summary = write_episodic_tables(files, out["csv"], out["md"], out["runs"], out["pc"], rows,
                                    ["5-0", "5-1"], [1], ["base", "novel"], delta="g0",
                                    title="T3")
    assert summary.loc["g10", (1, "base", "5-0")] == pytest.approx(55.0)
    assert summary.loc["g10", (1, "base", "mean")] == pytest.approx((55.0 + 45.7) / 2)
    assert summary.loc["g10", (1, "base", "Δ 5-0")] == pytest.approx(2.7)
    assert summary.loc["g10", (1, "base", "Δ mean")] == pytest.approx((2.7 + 1.9) / 2)
    assert summary.loc["g10", (1, "novel", "Δ 5-1")] == pytest.approx(-0.3)
    assert pd.isna(summary.loc["2-way", (1, "base", "5-0")])  # the binary head has no base
    md = out["md"].read_text()
    assert "55.0 (+2.7)" in md and "52.3 |" in md  # the reference row has no (±x)
    csv = pd.read_csv(out["csv"])
    assert "1-shot base Δ sd" in csv.columns and list(csv["row"]) == ["g0", "g10", "2-way"]
    runs = pd.read_csv(out["runs"])
    assert len(runs) == 6 and set(runs["row"]) == set(rows)
    assert len(pd.read_csv(out["pc"])) == 10  # per class: 4 generalized x 2 kinds + 2 binary


def test_episodic_table_refuses_other_metrics_and_a_bad_delta(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"dataset": "voc", "task": "5-0"}))
    rows = {"B": {"backbone": "PSP", "head": "binary"}}
    with pytest.raises(IfssError, match="not an episodic evaluation"):
        write_episodic_tables([tmp_path / "m.json"], *(tmp_path / f"o{i}" for i in range(4)),
                              rows, ["5-0"], [1], ["novel"])
    with pytest.raises(IfssError, match="delta row 'X'"):
        write_episodic_tables([tmp_path / "m.json"], *(tmp_path / f"o{i}" for i in range(4)),
                              rows, ["5-0"], [1], ["novel"], delta="X")


def fewshot_record(method, task, ishot, base, novel):
    return {"dataset": "voc", "task": task, "method": method, "base_method": "COS", "step": 1,
            "num_steps": 2, "nshot": 1, "ishot": ishot, "miou_base": base, "miou_novel": novel,
            "iou": [], "_path": "x"}


def test_fewshot_table_delta_is_the_mean_paired_difference():
    records = []
    # PIFS and MCLOS on 2 folds x 2 splits: MCLOS is +0.4 novel in every pair, while the splits
    # spread by 10 points
    for task, ishot, novel in (("5-0", 0, 0.20), ("5-0", 1, 0.30), ("5-1", 0, 0.25),
                               ("5-1", 1, 0.35)):
        records.append(fewshot_record("PIFS", task, ishot, 0.6, novel))
        records.append(fewshot_record("MCLOS", task, ishot, 0.6, novel + 0.004))
    runs = runs_frame(records)
    summary = summary_frame(runs, ["PIFS", "MCLOS"], [1], delta="PIFS")
    assert summary.loc["MCLOS", ("SS", 1, "mIoU-N", "delta")] == pytest.approx(0.4)
    assert summary.loc["MCLOS", ("SS", 1, "mIoU-N", "delta_sd")] == pytest.approx(0.0, abs=1e-9)
    assert summary.loc["MCLOS", ("SS", 1, "mIoU-N", "std")] > 5  # the spread the delta removes
    md = summary_markdown(summary, "ablation", delta="PIFS")
    assert "(+0.4)" in md and "mean paired difference to PIFS" in md
