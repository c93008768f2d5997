"""Rule `table`: metrics.json files -> results/tables/<name>{.csv,.md,_runs.csv,_per_class.csv}."""
import logging

from ifss.results import write_tables

sm = snakemake  # noqa: F821 (the object Snakemake gives a script)
logging.basicConfig(filename=sm.log[0], level=logging.INFO)
spec = sm.params.spec
try:
    summary = write_tables(
        sm.input.metrics, sm.output.csv, sm.output.md, sm.output.runs, sm.output.per_class,
        methods=spec["methods"], shots=spec["shots"], title=spec["title"],
    )
except Exception:
    logging.exception("table %s failed", spec["name"])
    raise
logging.info("table %s: %d runs, %d methods", spec["name"], len(sm.input.metrics), len(summary))
