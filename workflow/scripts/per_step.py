"""Rule `figure_per_step`: the metrics.json of every step of each method's continual run ->
results/figures/<name>/per_step.png (mIoU of all classes after each step, one line per method)
and per_step.csv (the numbers: old, new, all per method and step). ifss.continual_results does
the work.

Snakemake (rules/figures.smk): input.metrics, output.plot, output.csv, params.spec (name, title,
runs: method -> metrics.json of steps 0, 1, ...), log.
"""
import logging

from ifss.continual_results import write_per_step

sm = snakemake  # noqa: F821 (the object Snakemake gives a script)
logging.basicConfig(filename=sm.log[0], level=logging.INFO)
spec = sm.params.spec
try:
    frame = write_per_step(spec["runs"], sm.output.plot, sm.output.csv, spec["title"])
except Exception:
    logging.exception("per-step figure %s failed", spec["name"])
    raise
logging.info("per-step figure %s: %d methods, %d points", spec["name"],
             frame["method"].nunique(), len(frame))
