"""Continual-segmentation tables and per-step figures from metrics.json files (the MiB / SDR
layout).

A continual table reads one metrics.json per (task, protocol, method): the task's last step. It
has one row per method (a variant: its own row) and, per task and protocol, the mIoU of the old
classes (background and the step-0 classes: metrics.json `miou_base`), of the new classes (every
class added after step 0: `miou_novel`) and of all classes (`miou_all`), in percent. A cell
with several runs (none in the workflow's layout) shows their mean.

A dataset with extra test sets (coco-voc: `voc_val`, VOC val relabelled to COCO ids) writes each
one's summary under metrics.json `tests.<split>`; `extra_tests` ({split: [old|new|all]}) adds a
column per (split, metric) to every task and protocol, named `<split> <metric>` ("voc_val new":
`tests.voc_val.miou_novel`, the 20 VOC classes of WILSON's COCO-to-VOC table).

A per-step figure draws, for one task and protocol, the mIoU of all classes after each step (step
0 included: the step-0 run the method starts from), one line per method.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ifss.atomic import atomic_path, write_text
from ifss.errors import IfssError
from ifss.results import load_metrics, per_class_frame, percent, row_name

METRICS = ("old", "new", "all")
SOURCE = {"old": "miou_base", "new": "miou_novel", "all": "miou_all"}


def protocol_of(record: dict) -> str:
    """The run's `data.protocol` (saved with its resolved config)."""
    return ((record.get("config") or {}).get("data") or {}).get("protocol", "fewshot")


ExtraTests = Mapping[str, Sequence[str]]  # split -> metrics (old, new, all) of that test


def extra_columns(extra_tests: ExtraTests | None) -> list[tuple[str, str, str]]:
    """(column, split, metric) of each extra-test column, in the given order."""
    return [(f"{split} {metric}", split, metric)
            for split, metrics in (extra_tests or {}).items() for metric in metrics]


def extra_test_value(record: dict, split: str, metric: str):
    """A run's `metric` on its extra test `split`, in percent."""
    test = (record.get("tests") or {}).get(split)
    if not isinstance(test, dict) or SOURCE[metric] not in test:
        raise IfssError(f"metrics file {record['_path']} has no tests.{split}.{SOURCE[metric]} "
                        f"(the table's column `{split} {metric}`); rerun its job, or remove "
                        f"{split} from the table's extra_tests")
    return percent(test[SOURCE[metric]])


def continual_runs_frame(records: Sequence[dict],
                         extra_tests: ExtraTests | None = None) -> pd.DataFrame:
    """One row per run; mIoU in percent (and each extra-test column)."""
    extra = extra_columns(extra_tests)
    rows = []
    for r in records:
        rows.append({
            "dataset": r["dataset"], "task": r["task"], "protocol": protocol_of(r),
            "method": row_name(r), "registered_method": r["method"],
            "base_method": r["base_method"], "step": r["step"], "num_steps": r["num_steps"],
            **{m: percent(r.get(SOURCE[m])) for m in METRICS},
            **{column: extra_test_value(r, split, m) for column, split, m in extra},
            "pixel_accuracy": percent(r.get("pixel_accuracy")), "seed": r.get("seed"),
            "iterations": r.get("iterations"), "wall_time_s": r.get("wall_time_s"),
            "device": r.get("device"), "metrics": r["_path"],
        })
    frame = pd.DataFrame(rows)
    for col in (*METRICS, *(column for column, _, _ in extra), "pixel_accuracy"):
        frame[col] = frame[col].astype(float)
    return frame


def continual_summary(runs: pd.DataFrame, methods: Sequence[str] | None = None,
                      tasks: Sequence[str] | None = None,
                      protocols: Sequence[str] | None = None,
                      extra_tests: ExtraTests | None = None) -> pd.DataFrame:
    """Rows = methods (those with runs, in the given order); columns = (task, protocol, metric)
    in the given orders, metric: old, new, all, then the extra-test columns (`runs` must hold
    them: continual_runs_frame with the same extra_tests); cells without runs left out. Percent,
    unrounded."""
    metrics = [*METRICS, *(column for column, _, _ in extra_columns(extra_tests))]
    methods = list(methods) if methods is not None else list(dict.fromkeys(runs["method"]))
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(runs["task"]))
    protocols = (list(protocols) if protocols is not None
                 else list(dict.fromkeys(runs["protocol"])))
    data = {}
    for task in tasks:
        for protocol in protocols:
            cell = runs[(runs["task"] == task) & (runs["protocol"] == protocol)]
            if cell.empty:
                continue
            mean = cell.groupby("method")[metrics].mean()
            for metric in metrics:
                data[(task, protocol, metric)] = mean[metric].reindex(methods)
    frame = pd.DataFrame(data, index=pd.Index(methods, name="method"))
    if not data:
        return frame
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["task", "protocol", "metric"])
    present = runs["method"].unique()
    return frame[[m in present for m in frame.index]]


def continual_csv(summary: pd.DataFrame) -> pd.DataFrame:
    """One header row (`15-5 disjoint old`, ...), one decimal like the papers."""
    flat = summary.astype(float).round(1)
    flat.columns = [" ".join(map(str, c)) for c in summary.columns]
    return flat.reset_index()


def _fmt(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.1f}"


def continual_markdown(summary: pd.DataFrame, title: str = "") -> str:
    """A markdown table: a header row per task and protocol, then old / new / all."""
    columns = list(summary.columns)
    header = ["Method"] + [f"{t} {p} {m}" for t, p, m in columns]
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |",
              "|" + "|".join(["---"] + [":-:"] * (len(header) - 1)) + "|"]
    for method, row in summary.iterrows():
        values = [_fmt(row[c]) for c in columns]
        lines.append("| " + " | ".join([str(method)] + values) + " |")
    lines += [
        "",
        "mIoU in percent after the last step of each task (test: every validation image, classes "
        "not learned yet count as background); old = background and the step-0 classes, new = "
        "every class added after step 0, all = every class seen.",
    ]
    extra = list(dict.fromkeys(m.rpartition(" ")[0] for _, _, m in columns if m not in METRICS))
    if extra:
        lines[-1] += (f" Columns named after a split ({', '.join(extra)}) give the same on that "
                      "extra test set, after the same last step.")
    return "\n".join(lines) + "\n"


def continual_per_class(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (run, class): IoU in percent; `new`: learned after step 0."""
    frame = per_class_frame(records).drop(columns=["setting", "nshot", "ishot"])
    frame.insert(2, "protocol", [protocol_of(r) for r in records for _ in (r.get("iou") or [])])
    return frame.rename(columns={"novel": "new"})


def write_continual_tables(metrics_paths: Iterable[str | Path], csv: str | Path,
                           md: str | Path, runs_csv: str | Path, per_class_csv: str | Path,
                           methods: Sequence[str] | None = None,
                           tasks: Sequence[str] | None = None,
                           protocols: Sequence[str] | None = None,
                           title: str = "",
                           extra_tests: ExtraTests | None = None) -> pd.DataFrame:
    """Read the runs and write the four table files (each written whole, then renamed);
    `extra_tests`: {split: [old|new|all]}, the extra-test columns."""
    records = load_metrics(metrics_paths)
    fewshot = [r["_path"] for r in records if protocol_of(r) == "fewshot"]
    if fewshot:
        raise IfssError(f"{fewshot[0]} is a few-shot run (data.protocol fewshot); a continual "
                        "table reads runs of the disjoint, overlap or sequential protocol")
    runs = continual_runs_frame(records, extra_tests)
    summary = continual_summary(runs, methods, tasks, protocols, extra_tests)
    write_text(csv, continual_csv(summary).to_csv(index=False))
    write_text(md, continual_markdown(summary, title))
    write_text(runs_csv, runs.to_csv(index=False, float_format="%.4f"))
    write_text(per_class_csv, continual_per_class(records).to_csv(index=False,
                                                                  float_format="%.4f"))
    return summary


# ----------------------------------------------------------------- per-step figure


def per_step_frame(runs: Mapping[str, Sequence[str | Path]]) -> pd.DataFrame:
    """`runs`: method -> the metrics.json of steps 0, 1, ... (in order). One row per (method,
    step): mIoU of old, new and all classes in percent."""
    rows = []
    for method, paths in runs.items():
        for expected, record in enumerate(load_metrics(paths)):
            if record["step"] != expected:
                raise IfssError(f"{record['_path']} is step {record['step']}, expected step "
                                f"{expected} of {method}'s runs")
            rows.append({"method": method, "step": record["step"],
                         **{m: percent(record.get(SOURCE[m])) for m in METRICS},
                         "metrics": record["_path"]})
    frame = pd.DataFrame(rows)
    for col in METRICS:
        frame[col] = frame[col].astype(float)
    return frame


def per_step_plot(frame: pd.DataFrame, out_png: str | Path, title: str = "") -> None:
    """mIoU of all classes (y) after each step (x), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "osD^v<>ph*"
    for i, (method, rows) in enumerate(frame.groupby("method", sort=False)):
        ax.plot(rows["step"], rows["all"], marker=markers[i % len(markers)], label=method)
    steps = sorted(frame["step"].unique())
    ax.set_xticks(steps)
    ax.set_xlabel("step")
    ax.set_ylabel("mIoU, all classes seen (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if frame["method"].nunique() > 5 else 1)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)


def write_per_step(runs: Mapping[str, Sequence[str | Path]], out_png: str | Path,
                   out_csv: str | Path, title: str = "") -> pd.DataFrame:
    frame = per_step_frame(runs)
    per_step_plot(frame, out_png, title)
    write_text(out_csv, frame.to_csv(index=False, float_format="%.4f"))
    return frame
