# Training: step 0 per (dataset, task, base method), shared by every method starting from it;
# few-shot step k per (method, nshot, ishot); step k of a multi-step task takes step k-1 of the
# same run. The method registry (ifss/methods/registry.py) says which step-0 run a method needs,
# so registering a method needs no change here.


def maybe_temp(path):
    return path if config["keep_fewshot_models"] else temp(path)


def step0_inputs(wildcards):
    check_task(wildcards.dataset, wildcards.task)
    info = check_base(wildcards.base)
    inputs = dataset_inputs(wildcards.dataset)
    if info.step0_from:  # e.g. DWI's step 0 starts from COS's step-0 model
        inputs["previous"] = step0_dir(wildcards.dataset, wildcards.task, info.step0_from) + "/model.pt"
    elif DATASETS[wildcards.dataset]["weights"] != "none":
        inputs["weights"] = ancient(weights_path(DATASETS[wildcards.dataset]["weights"]))
    return inputs


def step0_sets(wildcards, input):
    fixed = dict(dataset=wildcards.dataset, task=wildcards.task, step=0, method=wildcards.base)
    fixed.update(_dataset_keys(wildcards.dataset))
    if "previous" in input.keys():
        fixed["previous"] = input.previous
    if "weights" in input.keys():
        fixed["model.pretrained"] = input.weights
    fragment = run_settings(wildcards.dataset, wildcards.task, wildcards.base, "step0", step=0)
    return set_args(fixed, fragment)


def _fewshot_run(wildcards):
    return fewshot_run(wildcards.dataset, wildcards.task, wildcards.method,
                       int(wildcards.nshot), int(wildcards.ishot), int(wildcards.step))


@functools.cache
def fewshot_run(dataset, task, method, nshot, ishot, step):
    """(method info, run fragment) of a few-shot step; unknown names fail here."""
    task_info = check_task(dataset, task)
    info = check_method(method)
    if not 1 <= step < task_info.num_steps:
        raise WorkflowError(
            f"task {task!r} has few-shot steps 1..{task_info.num_steps - 1}, not step{step} "
            f"(step-0 runs are results/runs/{dataset}/{task}/step0/<base>/)"
        )
    setting = "MS" if task_info.is_multi_step else "SS"
    fragment = run_settings(dataset, task, method, "fewshot", setting, nshot, ishot, step)
    check_shot(nshot, fragment)
    return info, fragment


def step_inputs(wildcards):
    """The previous step's model only: data and class index reach it through step 0."""
    info, _ = _fewshot_run(wildcards)
    step = int(wildcards.step)
    if step == 1:
        base_task = step0_task(wildcards.dataset, wildcards.task)
        previous = step0_dir(wildcards.dataset, base_task, info.base)
    else:
        previous = step_dir(wildcards.dataset, wildcards.task, wildcards.method,
                            wildcards.nshot, wildcards.ishot, step - 1)
    return {"previous": previous + "/model.pt"}


def step_sets(wildcards):
    _, fragment = _fewshot_run(wildcards)
    fixed = dict(dataset=wildcards.dataset, task=wildcards.task, step=int(wildcards.step),
                 nshot=int(wildcards.nshot), ishot=int(wildcards.ishot), method=wildcards.method)
    fixed.update(_dataset_keys(wildcards.dataset))
    return set_args(fixed, fragment)


rule train_step0:
    input:
        unpack(step0_inputs),
    output:
        model=protected("results/runs/{dataset}/{task}/step0/{base}/model.pt"),
        metrics="results/runs/{dataset}/{task}/step0/{base}/metrics.json",
    params:
        sets=step0_sets,
    log:
        "logs/runs/{dataset}/{task}/step0/{base}.log",
    benchmark:
        "benchmarks/runs/{dataset}/{task}/step0/{base}.tsv"
    threads: 4
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss train --out $(dirname {output.metrics}) {params.sets} > {log} 2>&1"


rule train_step:
    input:
        unpack(step_inputs),
    output:
        model=maybe_temp("results/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}/model.pt"),
        metrics="results/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}/metrics.json",
    params:
        sets=step_sets,
    log:
        "logs/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}.log",
    benchmark:
        "benchmarks/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}.tsv"
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss train --out $(dirname {output.metrics}) --previous {input.previous} {params.sets}"
        " > {log} 2>&1"
