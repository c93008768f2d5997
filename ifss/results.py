"""Tables from metrics.json files: the papers' layout, every run, and per-class IoU.

A table reads one metrics.json per run (the last step of its task) and has one row per method (a
configured variant of a method has its own row: the run's `label`) and, per setting (SS:
single-step tasks; MS: multi-step tasks) and shot, the mean and the sample standard deviation
(ddof=1) over folds and few-shot splits of mIoU-B, mIoU-N and HM, in percent.

HM convention: the table's HM is 2·B·N/(B+N) of the MEAN B and MEAN N of its cell, as in the PIFS
tables (their HM equals that of their B and N columns within rounding); its std is the spread of
the per-run HM values (2·b·n/(b+n) of each run, also in the runs table). The two differ: the mean
of per-run HMs is never above the HM of the means.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ifss.atomic import write_text
from ifss.errors import IfssError
from ifss.paired_delta import paired_delta, signed

METRICS = ("mIoU-B", "mIoU-N", "HM")
SETTINGS = ("SS", "MS")
RUN_KEYS = ("dataset", "task", "method", "base_method", "step", "num_steps", "nshot", "ishot")


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    """2·B·N/(B+N); 0 when both are 0, None when either is undefined."""
    if base is None or novel is None or _isnan(base) or _isnan(novel):
        return None
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def setting_of(num_steps: int) -> str:
    """SS for a task with one incremental step, MS for several (the PIFS naming)."""
    return "MS" if num_steps > 2 else "SS"


def read_record(path: Path) -> dict:
    """One metrics.json; a file that cannot be read or parsed is one sentence naming it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise IfssError(f"metrics file {path} cannot be read ({err}); rerun its job") from None
    if not isinstance(record, dict):
        raise IfssError(f"metrics file {path} is not a metrics record; rerun its job")
    record["_path"] = str(path)
    return record


def load_metrics(paths: Iterable[str | Path]) -> list[dict]:
    """The metrics.json records of `paths` (at least one), each checked for the keys tables use."""
    records = []
    for path in paths:
        path = Path(path)
        record = read_record(path)
        missing = [k for k in RUN_KEYS + ("miou_base", "miou_novel", "iou") if k not in record]
        if missing:
            raise IfssError(f"metrics file {path} lacks {', '.join(missing)}; rerun its job")
        records.append(record)
    if not records:
        raise IfssError("a table needs at least one metrics.json; its config names no run")
    return records


def percent(value):
    return None if value is None else 100.0 * value


def row_name(record: dict) -> str:
    """A run's table row: its variant label (older records have none: the method)."""
    return record.get("label", record["method"])


def runs_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per run; IoUs in percent; HM per run."""
    rows = []
    for r in records:
        rows.append({
            "dataset": r["dataset"], "task": r["task"], "setting": setting_of(r["num_steps"]),
            "method": row_name(r), "registered_method": r["method"],
            "base_method": r["base_method"], "nshot": r["nshot"],
            "ishot": r["ishot"], "step": r["step"], "num_steps": r["num_steps"],
            "mIoU-B": percent(r["miou_base"]), "mIoU-N": percent(r["miou_novel"]),
            "mIoU-all": percent(r.get("miou_all")),
            "HM": percent(harmonic_mean(r["miou_base"], r["miou_novel"])),
            "pixel_accuracy": percent(r.get("pixel_accuracy")),
            "seed": r.get("seed"), "iterations": r.get("iterations"),
            "wall_time_s": r.get("wall_time_s"), "device": r.get("device"), "metrics": r["_path"],
        })
    frame = pd.DataFrame(rows)
    for col in ("mIoU-B", "mIoU-N", "mIoU-all", "HM", "pixel_accuracy"):
        frame[col] = frame[col].astype(float)
    return frame.sort_values(["setting", "method", "nshot", "task", "ishot"], kind="stable",
                             ignore_index=True)


def per_class_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (run, class): IoU in percent (empty: the class is absent from the test set)."""
    rows = []
    for r in records:
        ious = r.get("iou") or []
        names = r.get("classes") or [None] * len(ious)
        ids = r.get("class_ids") or [None] * len(ious)
        num_base = r.get("num_base", len(ious))
        for index, (name, class_id, iou) in enumerate(zip(names, ids, ious)):
            rows.append({
                "dataset": r["dataset"], "task": r["task"], "setting": setting_of(r["num_steps"]),
                "method": row_name(r), "nshot": r["nshot"], "ishot": r["ishot"],
                "step": r["step"],
                "class_index": index, "class_id": class_id, "class": name,
                "novel": index >= num_base, "IoU": percent(iou),
            })
    frame = pd.DataFrame(rows)
    frame["IoU"] = frame["IoU"].astype(float)
    return frame


def summary_frame(runs: pd.DataFrame, methods: Sequence[str] | None = None,
                  shots: Sequence[int] | None = None, delta: str | None = None) -> pd.DataFrame:
    """Rows = methods (those with runs, in the given order); columns = (setting, shot, metric,
    stat) with stat mean/std, plus the run count (setting, shot, "n", ""). Percent, unrounded.
    With `delta` (a method), stats "delta" and "delta_sd" too: the mean paired difference to that
    method over the (task, split) runs both have, and its sample std (ifss.paired_delta)."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(runs["method"]))
    shots = sorted(shots if shots is not None else runs["nshot"].unique())
    data = {}
    for setting in SETTINGS:
        for nshot in shots:
            cell = runs[(runs["setting"] == setting) & (runs["nshot"] == nshot)]
            if cell.empty:
                continue
            groups = cell.groupby("method")[list(METRICS)]
            mean, std = groups.mean(), groups.std()
            mean["HM"] = [harmonic_mean(b, n) for b, n in zip(mean["mIoU-B"], mean["mIoU-N"])]
            for metric in METRICS:
                data[(setting, nshot, metric, "mean")] = mean[metric].reindex(methods)
                data[(setting, nshot, metric, "std")] = std[metric].reindex(methods)
                if delta is not None:
                    pairs = paired_delta(cell, "method", delta, ["task", "ishot"], metric)
                    data[(setting, nshot, metric, "delta")] = pairs["delta"].reindex(methods)
                    data[(setting, nshot, metric, "delta_sd")] = pairs["sd"].reindex(methods)
            data[(setting, nshot, "n", "")] = groups.size().reindex(methods, fill_value=0)
    frame = pd.DataFrame(data, index=pd.Index(methods, name="method"))
    if not data:
        return frame
    frame.columns = pd.MultiIndex.from_tuples(frame.columns,
                                              names=["setting", "shot", "metric", "stat"])
    return frame[frame.xs("n", axis=1, level="metric").sum(axis=1) > 0]


def _flat_name(setting, shot, metric, stat) -> str:
    return f"{setting} {shot}-shot {metric}" + (f" {stat}" if stat else "")


def summary_csv(summary: pd.DataFrame) -> pd.DataFrame:
    """The table with one header row: `SS 1-shot mIoU-B mean`, `... std`, `SS 1-shot n`; values
    rounded to one decimal like the papers."""
    flat = summary.copy()
    flat.columns = [_flat_name(*c) for c in summary.columns]
    for col, key in zip(flat.columns, summary.columns):
        if key[2] == "n":
            flat[col] = flat[col].astype(int)
        else:
            flat[col] = flat[col].astype(float).round(1)
    return flat.reset_index()


def _fmt(mean, std) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.1f}" if std is None or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def summary_markdown(summary: pd.DataFrame, title: str = "", delta: str | None = None) -> str:
    """A markdown table, cells "60.9 ± 1.2" (with `delta`: "60.9 ± 1.2 (+0.4)"), with a note on
    what the numbers are."""
    cells = [(s, k) for s, k, m, _ in summary.columns if m == "n"]
    header = ["Method"] + [f"{s} {k}-shot {m}" for s, k in cells for m in METRICS]
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines += ["| " + " | ".join(header) + " |",
              "|" + "|".join(["---"] + [":-:"] * (len(header) - 1)) + "|"]
    for method, row in summary.iterrows():
        values = [_fmt(row[(s, k, m, "mean")], row[(s, k, m, "std")])
                  + _delta_text(row, (s, k, m), delta is not None and method != delta)
                  for s, k in cells for m in METRICS]
        lines.append("| " + " | ".join([str(method)] + values) + " |")
    counts = sorted({int(v) for s, k in cells for v in summary[(s, k, "n", "")] if v})
    runs = "1 run per cell, so no ±" if counts == [1] else \
        f"{'/'.join(map(str, counts)) or 0} runs per cell"
    lines += [
        "",
        f"mIoU in percent, mean ± sample std over folds and few-shot splits ({runs}); "
        "mIoU-B includes background; "
        "HM = 2·B·N/(B+N) of the mean B and N (its ± is the spread of per-run HM); "
        "MS = after the last step of the multi-step tasks."
        + (f" (±x) = mean paired difference to {delta} over the same folds and splits (its "
           "sample std in the CSV's delta_sd)." if delta is not None else ""),
    ]
    return "\n".join(lines) + "\n"


def _delta_text(row, cell: tuple, shown: bool) -> str:
    if not shown or pd.isna(row.get((*cell, "delta"))):
        return ""
    return f" ({signed(row[(*cell, 'delta')])})"


def write_tables(metrics_paths: Iterable[str | Path], csv: str | Path, md: str | Path,
                 runs_csv: str | Path, per_class_csv: str | Path,
                 methods: Sequence[str] | None = None, shots: Sequence[int] | None = None,
                 title: str = "", delta: str | None = None) -> pd.DataFrame:
    """Read the runs and write the four table files (each written whole, then renamed)."""
    records = load_metrics(metrics_paths)
    runs = runs_frame(records)
    summary = summary_frame(runs, methods, shots, delta)
    write_text(csv, summary_csv(summary).to_csv(index=False))
    write_text(md, summary_markdown(summary, title, delta))
    write_text(runs_csv, runs.to_csv(index=False, float_format="%.4f"))
    write_text(per_class_csv, per_class_frame(records).to_csv(index=False, float_format="%.4f"))
    return summary
