# Training: step 0 per (dataset, task, base method), shared by every method starting from it;
# few-shot step k per (method, nshot, ishot); step k of a multi-step task takes step k-1 of the
# same run. The continual protocols (disjoint, overlap, sequential) have their own step 0 per
# protocol (sequential starts from disjoint's: same images, same labels) and one run per method.
# The method registry (ifss/methods/registry.py) says which step-0 run a method needs, so
# registering a method needs no change here. Run folders (ifss/workflow/paths.py):
#   STEP0_DIR           = results/runs/{dataset}/{task}/step0/{base}
#   STEP_DIR            = results/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}
#   CONTINUAL_STEP0_DIR = results/runs/{dataset}/{task}/{protocol}/step0/{base}
#   CONTINUAL_STEP_DIR  = results/runs/{dataset}/{task}/{protocol}/{method}/step{step}
# Only the model.pt of steps >= 1 are temp() (keep_fewshot_models keeps them): the metrics.json
# of every step stay, the per-step figures read them.


rule train_step0:
    input:
        unpack(step0_inputs),
    output:
        model=protected(f"{STEP0_DIR}/model.pt"),
        metrics=f"{STEP0_DIR}/metrics.json",
    params:
        sets=step0_sets,
    log:
        "logs/runs/{dataset}/{task}/step0/{base}.log",
    benchmark:
        "benchmarks/runs/{dataset}/{task}/step0/{base}.tsv"
    threads: training_threads("step0")
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
        model=maybe_temp(f"{STEP_DIR}/model.pt"),
        metrics=f"{STEP_DIR}/metrics.json",
    params:
        sets=step_sets,
    log:
        "logs/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}.log",
    benchmark:
        "benchmarks/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}.tsv"
    threads: training_threads("fewshot")
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss train --out $(dirname {output.metrics}) --previous {input.previous} {params.sets}"
        " > {log} 2>&1"


rule train_continual_step0:
    input:
        unpack(continual_step0_inputs),
    output:
        model=protected(f"{CONTINUAL_STEP0_DIR}/model.pt"),
        metrics=f"{CONTINUAL_STEP0_DIR}/metrics.json",
    params:
        sets=continual_step0_sets,
    log:
        "logs/runs/{dataset}/{task}/{protocol}/step0/{base}.log",
    benchmark:
        "benchmarks/runs/{dataset}/{task}/{protocol}/step0/{base}.tsv"
    threads: training_threads("step0")
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss train --out $(dirname {output.metrics}) {params.sets} > {log} 2>&1"


rule train_continual:
    input:
        unpack(continual_step_inputs),
    output:
        model=maybe_temp(f"{CONTINUAL_STEP_DIR}/model.pt"),
        metrics=f"{CONTINUAL_STEP_DIR}/metrics.json",
    params:
        sets=continual_step_sets,
    log:
        "logs/runs/{dataset}/{task}/{protocol}/{method}/step{step}.log",
    benchmark:
        "benchmarks/runs/{dataset}/{task}/{protocol}/{method}/step{step}.tsv"
    threads: training_threads("continual")
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss train --out $(dirname {output.metrics}) --previous {input.previous} {params.sets}"
        " > {log} 2>&1"
