"""The metrics a table may name as columns, and the metrics.json key each reads.

Torch- and pandas-free, so the workflow checks a config's tables (ifss.workflow.checks) against
the same names the table writers read (ifss.continual_results, ifss.episodic_results).
"""
from __future__ import annotations

# weak-shot table column -> key of metrics.json `weakshot` (ifss.metrics.weakshot_summary)
WEAKSHOT_SOURCE = {"base": "miou_base", "novel": "miou_novel", "all": "miou_all", "hm": "hm",
                   "fwiou": "fwiou", "macc": "macc", "pacc": "pacc", "macc_base": "macc_base",
                   "macc_novel": "macc_novel"}
WEAKSHOT_METRICS = tuple(WEAKSHOT_SOURCE)
DEFAULT_WEAKSHOT_METRICS = ("base", "novel", "all", "hm")

# episodic table column -> key of an episodic evaluation's metrics.json
EPISODIC_SOURCE = {"novel": "miou_novel", "base": "miou_base", "fb_iou": "fb_iou"}
EPISODIC_METRICS = tuple(EPISODIC_SOURCE)
