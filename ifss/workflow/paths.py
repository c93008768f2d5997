"""Where the workflow's files live: the one definition of the results layout.

    few-shot   step 0  results/runs/{dataset}/{task}/step0/{base}/
               step k  results/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{k}/
    continual  step 0  results/runs/{dataset}/{task}/{protocol}/step0/{base}/
               step k  results/runs/{dataset}/{task}/{protocol}/{method}/step{k}/
    weak-shot  step 1  results/runs/{dataset}/{task}/weakshot/{method}/step1/
               (no step 0: trained from ImageNet weights; its pseudo labels of the train set,
               `ifss pseudo-labels`, in results/pseudo/{dataset}/{task}/{method}/)
    episodic           results/runs/{dataset}/{task}/episodic/{backbone}/s{nshot}/{head}/
               (the evaluation of the few-shot step-0 run of `backbone` on the fold `task`;
               head: binary | generalized-g{gamma}, see `episodic_head`)

with protocol one of disjoint | overlap | sequential. A task's step 0 is the run of the first task
with the same step-0 classes (ifss.workflow.targets.step0_task), and sequential runs start from
disjoint's step 0: both train on the images holding only step-0 classes (at least one) with the
same labels (ifss.data.incremental), so the same model is never trained twice.

Relative paths (Snakemake resolves them against its working directory, `ifss train` against
the current one). The rules use these with wildcard placeholders as their output patterns
(`step0_dir("{dataset}", "{task}", "{base}")`), the input functions with values, and the CLI
for its default run folder, so the three never disagree.
"""
from __future__ import annotations

RUNS = "results/runs"
PSEUDO = "results/pseudo"
TABLES = "results/tables"
FIGURES = "results/figures"
SPLITS = "resources/splits"


def step0_dir(dataset, task, base) -> str:
    """The step-0 run of `base` on `task`: shared by every method whose step 1 starts from it."""
    return f"{RUNS}/{dataset}/{task}/step0/{base}"


def step_dir(dataset, task, method, nshot, ishot, step) -> str:
    """Few-shot step `step` >= 1 of one run (`method` is the configured name: a variant's own)."""
    return f"{RUNS}/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}"


# The continual-learning protocols (ifss.config.PROTOCOLS less `fewshot`), and the protocol whose
# step-0 run each one starts from.
CONTINUAL = ("disjoint", "overlap", "sequential")
STEP0_PROTOCOL = {"disjoint": "disjoint", "overlap": "overlap", "sequential": "disjoint"}


# The weak-shot protocol (SimFormer): step 1 of a two-step task, in the continual layout with
# protocol `weakshot`, and no step-0 run.
WEAKSHOT = "weakshot"


def continual_step0_dir(dataset, task, protocol, base) -> str:
    """The step-0 run of `base` on `task` under a continual protocol (`protocol` is the step-0
    protocol: disjoint or overlap; see STEP0_PROTOCOL)."""
    return f"{RUNS}/{dataset}/{task}/{protocol}/step0/{base}"


def continual_step_dir(dataset, task, protocol, method, step) -> str:
    """Continual step `step` >= 1 of one run (every train image with a class of the step)."""
    return f"{RUNS}/{dataset}/{task}/{protocol}/{method}/step{step}"


def weakshot_dir(dataset, task, method, step=1) -> str:
    """A weak-shot run (step 1 of a two-step task; `method`: the configured name)."""
    return continual_step_dir(dataset, task, WEAKSHOT, method, step)


def pseudo_dir(dataset, task, method) -> str:
    """The pseudo labels of the train set (`ifss pseudo-labels`: {image_id}.png and
    manifest.json) made by the weak-shot run of `method` on `task`."""
    return f"{PSEUDO}/{dataset}/{task}/{method}"


def episodic_head(head: str, gamma: float = 0.0) -> str:
    """The folder name of an episodic evaluation's head: `binary`, or `generalized-g{gamma}`
    (gamma as `%g` prints it: 0, 5, 0.5)."""
    return head if head == "binary" else f"{head}-g{gamma:g}"


def episodic_dir(dataset, task, backbone, nshot, head) -> str:
    """An episodic evaluation (`ifss eval`, eval.protocol episodic) of the step-0 run of
    `backbone` on the fold `task`, with `nshot` support images and the head folder `head`."""
    return f"{RUNS}/{dataset}/{task}/episodic/{backbone}/s{nshot}/{head}"


def run_dir(dataset, task, method, step, nshot, ishot, protocol="fewshot") -> str:
    """The folder of any step of any kind (step 0 of sequential: disjoint's; a weak-shot run has
    only its step 1)."""
    if protocol == WEAKSHOT:
        return weakshot_dir(dataset, task, method, step)
    if protocol != "fewshot":
        if int(step) == 0:
            return continual_step0_dir(dataset, task, STEP0_PROTOCOL[protocol], method)
        return continual_step_dir(dataset, task, protocol, method, step)
    if int(step) == 0:
        return step0_dir(dataset, task, method)
    return step_dir(dataset, task, method, nshot, ishot, step)


def table_files(name) -> dict[str, str]:
    """A table's outputs: the summary (csv, md), every run and every class's IoU."""
    base = f"{TABLES}/{name}"
    return {"csv": f"{base}.csv", "md": f"{base}.md", "runs": f"{base}_runs.csv",
            "per_class": f"{base}_per_class.csv"}


def figure_files(name, kind="comparison") -> dict[str, str]:
    """A figure's outputs: comparison (qualitative masks, t-SNE) or per_step (mIoU after each
    step, the plot and its numbers)."""
    if kind == "per_step":
        return {"plot": f"{FIGURES}/{name}/per_step.png", "csv": f"{FIGURES}/{name}/per_step.csv"}
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
