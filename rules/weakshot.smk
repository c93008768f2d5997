# Weak-shot segmentation (SimFormer): a weak-shot run is step 1 of a two-step task trained from
# the dataset's ImageNet weights, with no step-0 run: the base classes from pixel labels, the
# novel classes from image labels only (data.protocol weakshot). A variant with `pseudo_labels:
# SOURCE` (SimFormer's retraining) trains on the pseudo labels that SOURCE's step-1 model makes
# of the train set (`ifss pseudo-labels`, data.train_labels). Folders (ifss/workflow/paths.py):
#   WEAKSHOT_DIR = results/runs/{dataset}/{task}/weakshot/{method}/step{step}   (step 1 only)
#   PSEUDO_DIR   = results/pseudo/{dataset}/{task}/{method}    ({image_id}.png + manifest.json)
# A weak-shot model.pt is kept (not temp()): it is the end product and the pseudo labels' source.
# The pseudo-label folder is a directory() output: Snakemake removes it before a rerun and after
# a failure, and `ifss pseudo-labels` renames the finished folder (manifest.json written last)
# into place, so the folder exists only when complete.


rule train_weakshot:
    input:
        unpack(weakshot_inputs),
    output:
        model=f"{WEAKSHOT_DIR}/model.pt",
        metrics=f"{WEAKSHOT_DIR}/metrics.json",
    params:
        sets=weakshot_sets,
    log:
        "logs/runs/{dataset}/{task}/weakshot/{method}/step{step}.log",
    benchmark:
        "benchmarks/runs/{dataset}/{task}/weakshot/{method}/step{step}.tsv"
    threads: training_threads("weakshot")
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss train --out $(dirname {output.metrics}) {params.sets} > {log} 2>&1"


rule pseudo_labels:
    input:
        unpack(pseudo_inputs),
    output:
        labels=directory(PSEUDO_DIR),
    params:
        sets=pseudo_sets,
    log:
        "logs/pseudo/{dataset}/{task}/{method}.log",
    benchmark:
        "benchmarks/pseudo/{dataset}/{task}/{method}.tsv"
    threads: training_threads("weakshot")
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss pseudo-labels --model {input.model} --out {output.labels} {params.sets}"
        " > {log} 2>&1"
