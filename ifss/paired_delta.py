"""Paired differences to a reference row: the mean over the folds (and few-shot splits) that
both rows have of (row − reference), and its sample standard deviation.

Ablation rows often differ by less than the spread over splits (MCLOS's differ by < 0.5 where
splits spread by ±7), so only differences taken within each fold and split, then averaged, can
show an ordering; the GFSS report prints them as "54.9 (+2.6)". Tables take a `delta:` option.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def paired_delta(frame: pd.DataFrame, row_col: str, reference: str, pair_cols: Sequence[str],
                 value_col: str) -> pd.DataFrame:
    """Per row of `frame[row_col]` other than `reference`: `delta` (mean over the pairs of
    row − reference), `sd` (sample std, ddof 1; NaN with one pair) and `pairs` (their count), from
    the values in `value_col` matched on `pair_cols` (pairs either side lacks are left out)."""
    pair_cols = list(pair_cols)
    values = frame[[row_col, *pair_cols, value_col]].dropna(subset=[value_col])
    ref = values[values[row_col] == reference].drop(columns=row_col)
    others = values[values[row_col] != reference]
    joined = others.merge(ref, on=pair_cols, suffixes=("", "_ref"))
    joined["diff"] = joined[value_col] - joined[f"{value_col}_ref"]
    grouped = joined.groupby(row_col, sort=False)["diff"]
    out = pd.DataFrame({"delta": grouped.mean(), "sd": grouped.std(), "pairs": grouped.size()})
    out.index.name = row_col
    return out


def signed(value) -> str:
    """"+2.6", "-0.1", "+0.0": the report's way of printing a difference."""
    return "" if value is None or pd.isna(value) else f"{value:+.1f}"
