"""Tables of episodic evaluations (generalized few-shot segmentation, the GFSS capstone report's
Tables 1-4): rows = the table's `rows` (a backbone's step-0 run evaluated with a head and a
distillation weight gamma), columns = shot x metric x fold and the mean over folds, in percent.

Each evaluation's metrics.json (ifss.episodic.evaluate) holds the mean over its runs of the novel
mIoU, the base mIoU (generalized head only) and the FB-IoU. With `delta: ROW`, every other row
also gets, per shot and metric, its difference to ROW in each fold (the markdown's "54.9 (+2.6)")
and the mean paired difference over the folds with its sample std (ifss.paired_delta).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ifss.atomic import write_text
from ifss.errors import IfssError
from ifss.paired_delta import paired_delta, signed
from ifss.results import percent, read_record
from ifss.table_metrics import EPISODIC_SOURCE

METRIC_NAMES = {"novel": "novel mIoU", "base": "base mIoU", "fb_iou": "FB-IoU"}
RECORD_KEYS = ("dataset", "task", "method", "nshot", "head", "gamma", "miou_novel", "fb_iou")


def load_episodic(paths: Iterable[str | Path]) -> list[dict]:
    records = []
    for path in paths:
        record = read_record(Path(path))
        missing = [k for k in RECORD_KEYS if k not in record]
        if record.get("protocol") != "episodic" or missing:
            raise IfssError(f"metrics file {path} is not an episodic evaluation (lacks "
                            f"{', '.join(missing) or 'protocol: episodic'}); rerun its job")
        records.append(record)
    if not records:
        raise IfssError("an episodic table needs at least one metrics.json; its config names "
                        "no evaluation")
    return records


def _matches(record: dict, row: dict) -> bool:
    gamma = row.get("gamma", 0.0) if row["head"] == "generalized" else 0.0
    return (record["method"] == row["backbone"] and record["head"] == row["head"]
            and float(record["gamma"]) == float(gamma))


def row_records(records: list[dict], rows: dict):
    """(row name, record) of every evaluation each row shows (rows may share one)."""
    for name, row in rows.items():
        for record in records:
            if _matches(record, row):
                yield name, record


def runs_frame(records: list[dict], rows: dict) -> pd.DataFrame:
    """One line per (table row, evaluation): rows sharing an evaluation each get it."""
    lines = []
    for name, r in row_records(records, rows):
        lines.append({
            "row": name, "dataset": r["dataset"], "fold": r["task"], "backbone": r["method"],
            "head": r["head"], "gamma": r["gamma"], "nshot": r["nshot"],
            "episodes": r.get("episodes"), "runs": r.get("runs"),
            **{metric: percent(r.get(key)) for metric, key in EPISODIC_SOURCE.items()},
            "wall_time_s": r.get("wall_time_s"), "metrics": r["_path"],
        })
    frame = pd.DataFrame(lines)
    if frame.empty:
        raise IfssError("no evaluation matches a row of the table; rerun the table's jobs")
    for metric in EPISODIC_SOURCE:
        frame[metric] = frame[metric].astype(float)
    return frame


def summary_frame(runs: pd.DataFrame, rows: list[str], folds: list[str], shots: list[int],
                  metrics: list[str], delta: str | None = None) -> pd.DataFrame:
    """Rows in the table's order; columns (shot, metric, column) with column = each fold, "mean"
    (over the folds with a value) and, with `delta`, "Δ <fold>", "Δ mean" and "Δ sd"."""
    data = {}
    for nshot in shots:
        for metric in metrics:
            cell = runs[runs["nshot"] == nshot]
            values = cell.pivot_table(index="row", columns="fold", values=metric, aggfunc="mean")
            values = values.reindex(index=rows, columns=folds)
            for fold in folds:
                data[(nshot, metric, fold)] = values[fold]
            data[(nshot, metric, "mean")] = values.mean(axis=1)
            if delta is None:
                continue
            for fold in folds:
                data[(nshot, metric, f"Δ {fold}")] = values[fold] - values.loc[delta, fold]
            pairs = paired_delta(cell, "row", delta, ["fold"], metric).reindex(rows)
            data[(nshot, metric, "Δ mean")] = pairs["delta"]
            data[(nshot, metric, "Δ sd")] = pairs["sd"]
    frame = pd.DataFrame(data, index=pd.Index(rows, name="row"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["shot", "metric", "column"])
    return frame


def summary_csv(summary: pd.DataFrame) -> pd.DataFrame:
    flat = summary.astype(float).round(1)
    flat.columns = [f"{shot}-shot {metric} {col}" for shot, metric, col in summary.columns]
    return flat.reset_index()


def summary_markdown(summary: pd.DataFrame, folds: list[str], title: str = "",
                     delta: str | None = None) -> str:
    groups = list(dict.fromkeys((s, m) for s, m, _ in summary.columns))
    header = ["Row"] + [f"{s}-shot {METRIC_NAMES[m]} {c}" for s, m in groups
                        for c in [*folds, "mean"]]
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |",
              "|" + "|".join(["---"] + [":-:"] * (len(header) - 1)) + "|"]
    for name, row in summary.iterrows():
        cells = []
        for s, m in groups:
            for col in [*folds, "mean"]:
                value = row[(s, m, col)]
                text = "–" if pd.isna(value) else f"{value:.1f}"
                if delta is not None and name != delta and not pd.isna(value):
                    diff = row[(s, m, "Δ mean" if col == "mean" else f"Δ {col}")]
                    text += f" ({signed(diff)})" if not pd.isna(diff) else ""
                cells.append(text)
        lines.append("| " + " | ".join([str(name)] + cells) + " |")
    note = ("Percent; base mIoU and FB-IoU per fold sum intersections and unions over all "
            "episodes before dividing; mean = over the folds")
    if delta is not None:
        note += (f"; (±x) = difference to {delta} in the same fold (mean column: the mean "
                 "paired difference; its sample std is in the CSV)")
    lines += ["", note + "."]
    return "\n".join(lines) + "\n"


def per_class_frame(records: list[dict], rows: dict) -> pd.DataFrame:
    lines = []
    for name, r in row_records(records, rows):
        for kind in ("novel", "base"):
            for cls, iou in (r.get(f"per_class_{kind}") or {}).items():
                lines.append({"row": name, "fold": r["task"], "nshot": r["nshot"],
                              "kind": kind, "class": cls, "IoU": percent(iou)})
    return pd.DataFrame(lines, columns=["row", "fold", "nshot", "kind", "class", "IoU"])


def write_episodic_tables(metrics_paths, csv, md, runs_csv, per_class_csv, rows: dict,
                          tasks: list[str], shots: list[int], metrics: list[str],
                          delta: str | None = None, title: str = "") -> pd.DataFrame:
    """Read the evaluations and write the four table files."""
    if delta is not None and delta not in rows:
        raise IfssError(f"delta row {delta!r} is not one of the table's rows "
                        f"({', '.join(rows)})")
    records = load_episodic(metrics_paths)
    runs = runs_frame(records, rows)
    summary = summary_frame(runs, list(rows), list(tasks), list(shots), list(metrics), delta)
    write_text(csv, summary_csv(summary).to_csv(index=False))
    write_text(md, summary_markdown(summary, list(tasks), title, delta))
    write_text(runs_csv, runs.to_csv(index=False, float_format="%.4f"))
    write_text(per_class_csv, per_class_frame(records, rows).to_csv(index=False,
                                                                    float_format="%.4f"))
    return summary
