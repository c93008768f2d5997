"""The benchmark's record: one entry per figure (value, target, met, sizes, repeats, details),
written as `<device>.json` and a markdown table `<device>.md`."""
from __future__ import annotations

import math

SCHEMA_VERSION = 1
OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t}


def clean(obj):
    """JSON-safe copy: non-finite floats become None, tuples lists, numbers plain numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return clean(obj.item())
    return obj


def figure(value, unit: str, *, target: tuple[str, float] | None = None, note: str | None = None,
           sizes: dict | None = None, warmup: int | None = None, repeats: int | None = None,
           details: dict | None = None, description: str = "") -> dict:
    """One figure. `target` is (op, bound) with op '<=' or '>='; `met` is None when there is no
    target or no value."""
    value = clean(value)
    met = None
    if target is not None and value is not None:
        met = bool(OPS[target[0]](value, target[1]))
    return {
        "value": value,
        "unit": unit,
        "target": None if target is None else {"op": target[0], "value": target[1]},
        "met": met,
        "note": note,
        "description": description,
        "sizes": sizes or {},
        "warmup": warmup,
        "repeats": repeats,
        "details": clean(details or {}),
    }


def skipped(unit: str, note: str, description: str = "", target=None, sizes=None) -> dict:
    return figure(None, unit, target=target, note=note, sizes=sizes, description=description)


def _fmt(value, unit: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if unit == "ratio":
            return f"{value:.3f}"
        return f"{value:.4g}"
    return str(value)


def _target(fig: dict) -> str:
    t = fig["target"]
    return "" if t is None else f"{t['op']} {t['value']:g}"


def _met(fig: dict) -> str:
    return {True: "yes", False: "**no**", None: ""}[fig["met"]]


def _sizes(fig: dict) -> str:
    s = fig.get("sizes") or {}
    parts = []
    if "backbone" in s:
        parts.append(f"{s['backbone']} {s.get('crop', '?')}px b{s.get('batch', '?')}")
    elif "crop" in s:
        parts.append(f"{s['crop']}px b{s.get('batch', '?')}")
    for key in ("iterations", "images", "batches", "workers", "configs"):
        if key in s:
            parts.append(f"{key} {s[key]}")
    if fig.get("repeats"):
        parts.append(f"median of {fig['repeats']} (+{fig.get('warmup') or 0} warm-up)")
    return ", ".join(str(p) for p in parts)


def markdown(record: dict) -> str:
    """The record as a markdown page: a header and one table row per figure."""
    h = record
    lines = [
        f"# ifss bench: {h['device']}{' (quick)' if h['quick'] else ''}",
        "",
        f"- device: {h['device_name']}; torch {h['versions']['torch']}, ifss "
        f"{h['versions']['ifss']}; {h['threads']} threads; load average "
        f"{h['load_average']['start']} -> {h['load_average']['end']}",
        f"- {h['timestamp']}, {h['wall_time_s']:.0f} s",
        "",
        "| figure | value | unit | target | met | sizes | note |",
        "| --- | ---: | --- | --- | --- | --- | --- |",
    ]
    for name, fig in h["figures"].items():
        note = (fig.get("note") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {_fmt(fig['value'], fig['unit'])} | {fig['unit']} | "
                     f"{_target(fig)} | {_met(fig)} | {_sizes(fig)} | {note} |")
    methods = h.get("methods") or {}
    if methods:
        lines += ["", "## Methods (step 1; step-0-only methods at step 0)", "",
                  "| method | step | trains | step s | vs | ratio | prepare s | state MiB | "
                  "carried state | note |",
                  "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | --- | --- |"]
        for name, m in methods.items():
            lines.append(
                f"| {name} | {m.get('step', '')} | {_fmt(m.get('trains'), '')} | "
                f"{_fmt(m.get('step_s'), 's')} | "
                f"{m.get('reference') or ''} | {_fmt(m.get('ratio'), 'ratio')} | "
                f"{_fmt(m.get('prepare_s'), 's')} | {_fmt(m.get('state_mib'), 'MiB')} | "
                f"{'yes' if m.get('carried_state') else ''} | "
                f"{(m.get('note') or '').replace('|', '/')} |")
    lines.append("")
    return "\n".join(lines)
