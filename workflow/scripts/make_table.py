"""Rule `table`: metrics.json files -> results/tables/<name>{.csv,.md,_runs.csv,_per_class.csv}
(a few-shot table: ifss.results; kind continual, weak-shot tables included:
ifss.continual_results; kind episodic: ifss.episodic_results)."""
import logging

from ifss.continual_results import write_continual_tables
from ifss.episodic_results import write_episodic_tables
from ifss.results import write_tables

sm = snakemake  # noqa: F821 (the object Snakemake gives a script)
logging.basicConfig(filename=sm.log[0], level=logging.INFO)
spec = sm.params.spec
files = (sm.input.metrics, sm.output.csv, sm.output.md, sm.output.runs, sm.output.per_class)
try:
    if spec.get("kind") == "episodic":
        summary = write_episodic_tables(*files, rows=spec["rows"], tasks=spec["tasks"],
                                        shots=spec["shots"], metrics=spec["metrics"],
                                        delta=spec.get("delta"), title=spec["title"])
    elif spec.get("kind") == "continual":
        summary = write_continual_tables(*files, methods=spec["methods"], tasks=spec["tasks"],
                                         protocols=spec["protocols"], title=spec["title"],
                                         extra_tests=spec.get("extra_tests"),
                                         weakshot_metrics=spec.get("metrics"))
    else:
        summary = write_tables(*files, methods=spec["methods"], shots=spec["shots"],
                               title=spec["title"], delta=spec.get("delta"))
except Exception:
    logging.exception("table %s failed", spec["name"])
    raise
logging.info("table %s: %d runs, %d methods", spec["name"], len(sm.input.metrics), len(summary))
