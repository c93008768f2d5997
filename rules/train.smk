# Training: step 0 per (dataset, task, base method), shared by every method starting from it;
# few-shot step k per (method, nshot, ishot); step k of a multi-step task takes step k-1 of the
# same run. The method registry (ifss/methods/registry.py) says which step-0 run a method needs,
# so registering a method needs no change here. Run folders (ifss/workflow/paths.py):
#   STEP0_DIR = results/runs/{dataset}/{task}/step0/{base}
#   STEP_DIR  = results/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}


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
