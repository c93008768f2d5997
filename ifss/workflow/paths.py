"""Where the workflow's files live: the one definition of the results layout.

Relative paths (Snakemake resolves them against its working directory, `ifss train` against
the current one). The rules use these with wildcard placeholders as their output patterns
(`step0_dir("{dataset}", "{task}", "{base}")`), the input functions with values, and the CLI
for its default run folder, so the three never disagree.
"""
from __future__ import annotations

RUNS = "results/runs"
TABLES = "results/tables"
FIGURES = "results/figures"
SPLITS = "resources/splits"


def step0_dir(dataset, task, base) -> str:
    """The step-0 run of `base` on `task`: shared by every method whose step 1 starts from it."""
    return f"{RUNS}/{dataset}/{task}/step0/{base}"


def step_dir(dataset, task, method, nshot, ishot, step) -> str:
    """Few-shot step `step` >= 1 of one run (`method` is the configured name: a variant's own)."""
    return f"{RUNS}/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}"


def run_dir(dataset, task, method, step, nshot, ishot) -> str:
    """The folder of any step: step0_dir for step 0, else step_dir."""
    if int(step) == 0:
        return step0_dir(dataset, task, method)
    return step_dir(dataset, task, method, nshot, ishot, step)


def table_files(name) -> dict[str, str]:
    """A table's outputs: the summary (csv, md), every run and every class's IoU."""
    base = f"{TABLES}/{name}"
    return {"csv": f"{base}.csv", "md": f"{base}.md", "runs": f"{base}_runs.csv",
            "per_class": f"{base}_per_class.csv"}


def figure_files(name) -> dict[str, str]:
    return {"qualitative": f"{FIGURES}/{name}/qualitative.png",
            "tsne": f"{FIGURES}/{name}/tsne.png"}


def figure_model(figure, method) -> str:
    """The figure's own copy of a compared run's model.pt (few-shot models are temp files)."""
    return f"{FIGURES}/{figure}/models/{method}.pt"


def dataset_marker(root: str, source: str) -> str:
    """The file whose presence says the dataset folder is complete ('' for source local: the
    folder itself is checked)."""
    root = root.rstrip("/")
    markers = {"synth": f"{root}/meta.json", "download": f"{root}/.ifss-prepared.json"}
    return markers.get(source, "")


def class_index_path(dataset) -> str:
    return f"{SPLITS}/{dataset}/class_index.json"


def weights_path(weights_dir: str, name) -> str:
    return f"{weights_dir.rstrip('/')}/{name}.pth"
