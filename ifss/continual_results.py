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

A weak-shot table (protocol `weakshot`: SimFormer's step 1 of a two-step task, base classes
learned from pixel labels, novel classes from image labels only) reads the same files but its
columns are, per task, the chosen `weakshot_metrics` of the record's `weakshot` entry (SimFormer's
metrics; background left out on COCO-Stuff-10K and ADE20K): base, novel, all (mIoU of the base, novel and all classes), hm
(their harmonic mean), fwiou (frequency-weighted IoU), macc / pacc (mean class / pixel accuracy),
macc_base, macc_novel; its runs table adds them as `weakshot_<metric>` and its per-class table
holds SimFormer's per-class IoU and accuracy.

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
from ifss.table_metrics import DEFAULT_WEAKSHOT_METRICS, WEAKSHOT_METRICS, WEAKSHOT_SOURCE

METRICS = ("old", "new", "all")
SOURCE = {"old": "miou_base", "new": "miou_novel", "all": "miou_all"}
WEAKSHOT = "weakshot"  # the protocol whose columns are WEAKSHOT_METRICS


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


def weakshot_column(metric: str) -> str:
    """The runs table's column of a weak-shot metric."""
    return f"{WEAKSHOT}_{metric}"


def check_weakshot_metrics(metrics: Sequence[str]) -> list[str]:
    metrics = list(metrics)
    bad = [m for m in metrics if m not in WEAKSHOT_SOURCE]
    if bad or not metrics:
        raise IfssError(f"weak-shot table metrics {metrics} must be some of "
                        f"{', '.join(WEAKSHOT_METRICS)}; use e.g. {list(DEFAULT_WEAKSHOT_METRICS)}")
    return metrics


def weakshot_value(record: dict, metric: str):
    """A weak-shot run's `metric` (metrics.json `weakshot`), in percent."""
    entry = record.get(WEAKSHOT)
    if not isinstance(entry, dict) or WEAKSHOT_SOURCE[metric] not in entry:
        raise IfssError(f"metrics file {record['_path']} has no "
                        f"{WEAKSHOT}.{WEAKSHOT_SOURCE[metric]} (the weak-shot column "
                        f"`{metric}`); rerun its job with data.protocol weakshot")
    return percent(entry[WEAKSHOT_SOURCE[metric]])


def continual_runs_frame(records: Sequence[dict], extra_tests: ExtraTests | None = None,
                         weakshot_metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run; mIoU in percent (and each extra-test column). With weak-shot runs among
    `records`, a `weakshot_<metric>` column per weak-shot metric too (empty for the others)."""
    extra = extra_columns(extra_tests)
    weak = (check_weakshot_metrics(weakshot_metrics or DEFAULT_WEAKSHOT_METRICS)
            if any(protocol_of(r) == WEAKSHOT for r in records) else [])
    rows = []
    for r in records:
        rows.append({
            "dataset": r["dataset"], "task": r["task"], "protocol": protocol_of(r),
            "method": row_name(r), "registered_method": r["method"],
            "base_method": r["base_method"], "step": r["step"], "num_steps": r["num_steps"],
            **{m: percent(r.get(SOURCE[m])) for m in METRICS},
            **{column: extra_test_value(r, split, m) for column, split, m in extra},
            **{weakshot_column(m): weakshot_value(r, m) if protocol_of(r) == WEAKSHOT else None
               for m in weak},
            "pixel_accuracy": percent(r.get("pixel_accuracy")), "seed": r.get("seed"),
            "iterations": r.get("iterations"), "wall_time_s": r.get("wall_time_s"),
            "device": r.get("device"), "metrics": r["_path"],
        })
    frame = pd.DataFrame(rows)
    for col in (*METRICS, *(column for column, _, _ in extra),
                *(weakshot_column(m) for m in weak), "pixel_accuracy"):
        frame[col] = frame[col].astype(float)
    return frame


def continual_summary(runs: pd.DataFrame, methods: Sequence[str] | None = None,
                      tasks: Sequence[str] | None = None,
                      protocols: Sequence[str] | None = None,
                      extra_tests: ExtraTests | None = None,
                      weakshot_metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows = methods (those with runs, in the given order); columns = (task, protocol, metric)
    in the given orders, metric: old, new, all, then the extra-test columns (`runs` must hold
    them: continual_runs_frame with the same extra_tests), or for protocol weakshot the weak-shot
    metrics (base, novel, all, hm by default; continual_runs_frame with the same
    weakshot_metrics); cells without runs left out. Percent, unrounded."""
    metrics = [*METRICS, *(column for column, _, _ in extra_columns(extra_tests))]
    weak = check_weakshot_metrics(weakshot_metrics or DEFAULT_WEAKSHOT_METRICS)
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
            columns = ({m: weakshot_column(m) for m in weak} if protocol == WEAKSHOT
                       else {m: m for m in metrics})  # column label -> runs column
            mean = cell.groupby("method")[list(columns.values())].mean()
            for metric, column in columns.items():
                data[(task, protocol, metric)] = mean[column].reindex(methods)
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
    lines.append("")
    continual = [(t, p, m) for t, p, m in columns if p != WEAKSHOT]
    if continual or not columns:
        lines.append(
            "mIoU in percent after the last step of each task (test: every validation image, "
            "classes not learned yet count as background); old = background and the step-0 "
            "classes, new = every class added after step 0, all = every class seen.")
    extra = list(dict.fromkeys(m.rpartition(" ")[0] for _, _, m in continual if m not in METRICS))
    if extra:
        lines[-1] += (f" Columns named after a split ({', '.join(extra)}) give the same on that "
                      "extra test set, after the same last step.")
    weak = list(dict.fromkeys(m for _, p, m in columns if p == WEAKSHOT))
    if weak:
        lines.append(WEAKSHOT_NOTE + " " + "; ".join(WEAKSHOT_NAMES[m] for m in weak) + ".")
    return "\n".join(lines) + "\n"


WEAKSHOT_NOTE = (
    "Weak-shot columns (protocol weakshot): step 1 trained without a step-0 run, the base classes "
    "with pixel labels and the novel classes with image labels only; SimFormer's metrics in "
    "percent on every validation image (background left out where the dataset has none to "
    "label: COCO-Stuff-10K, ADE20K):")
WEAKSHOT_NAMES = {
    "base": "base = mIoU of the base classes", "novel": "novel = mIoU of the novel classes",
    "all": "all = mIoU of all classes", "hm": "hm = harmonic mean of base and novel",
    "fwiou": "fwiou = frequency-weighted IoU", "macc": "macc = mean class accuracy",
    "pacc": "pacc = pixel accuracy", "macc_base": "macc_base = mean accuracy of the base classes",
    "macc_novel": "macc_novel = mean accuracy of the novel classes"}


def continual_per_class(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (run, class): IoU in percent; `new`: learned after step 0. Weak-shot runs
    only: SimFormer's per-class IoU and accuracy (metrics.json `weakshot`: empty for the classes
    its metrics leave out, such as background), `novel`: learned from image labels."""
    if records and all(protocol_of(r) == WEAKSHOT for r in records):
        return weakshot_per_class(records)
    frame = per_class_frame(records).drop(columns=["setting", "nshot", "ishot"])
    frame.insert(2, "protocol", [protocol_of(r) for r in records for _ in (r.get("iou") or [])])
    return frame.rename(columns={"novel": "new"})


def weakshot_per_class(records: Sequence[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        entry = r.get(WEAKSHOT)
        if not isinstance(entry, dict) or "iou" not in entry:
            raise IfssError(f"metrics file {r['_path']} has no {WEAKSHOT}.iou; rerun its job "
                            "with data.protocol weakshot")
        ious, accs = entry["iou"], entry.get("acc") or [None] * len(entry["iou"])
        names = r.get("classes") or [None] * len(ious)
        ids = r.get("class_ids") or [None] * len(ious)
        num_base = r.get("num_base", len(ious))
        for index, (name, class_id, iou, acc) in enumerate(zip(names, ids, ious, accs)):
            rows.append({
                "dataset": r["dataset"], "task": r["task"], "protocol": WEAKSHOT,
                "method": row_name(r), "step": r["step"], "class_index": index,
                "class_id": class_id, "class": name, "novel": index >= num_base,
                "IoU": percent(iou), "ACC": percent(acc),
            })
    frame = pd.DataFrame(rows)
    for col in ("IoU", "ACC"):
        frame[col] = frame[col].astype(float)
    return frame


def write_continual_tables(metrics_paths: Iterable[str | Path], csv: str | Path,
                           md: str | Path, runs_csv: str | Path, per_class_csv: str | Path,
                           methods: Sequence[str] | None = None,
                           tasks: Sequence[str] | None = None,
                           protocols: Sequence[str] | None = None,
                           title: str = "",
                           extra_tests: ExtraTests | None = None,
                           weakshot_metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Read the runs and write the four table files (each written whole, then renamed);
    `extra_tests`: {split: [old|new|all]}, the extra-test columns; `weakshot_metrics`: the
    columns of protocol weakshot (default base, novel, all, hm)."""
    records = load_metrics(metrics_paths)
    fewshot = [r["_path"] for r in records if protocol_of(r) == "fewshot"]
    if fewshot:
        raise IfssError(f"{fewshot[0]} is a few-shot run (data.protocol fewshot); a continual "
                        "table reads runs of the disjoint, overlap, sequential or weakshot "
                        "protocol")
    runs = continual_runs_frame(records, extra_tests, weakshot_metrics)
    summary = continual_summary(runs, methods, tasks, protocols, extra_tests, weakshot_metrics)
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
