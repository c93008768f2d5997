# Episodic evaluation (generalized few-shot segmentation, the GFSS capstone): `ifss eval` with
# eval.protocol episodic evaluates the few-shot step-0 run of a backbone method on its fold with
# per-episode heads trained on frozen features (ifss/episodic/). One job per (dataset, fold,
# backbone, shot, head):
#   EPISODIC_DIR = results/runs/{dataset}/{task}/episodic/{backbone}/s{nshot}/{head}
# head: binary | generalized-g{gamma}; the episode settings come from datasets.D.episodic.


rule evaluate_episodic:
    input:
        unpack(episodic_inputs),
    output:
        metrics=f"{EPISODIC_DIR}/metrics.json",
    params:
        sets=episodic_sets,
    log:
        "logs/runs/{dataset}/{task}/episodic/{backbone}/s{nshot}/{head}.log",
    benchmark:
        "benchmarks/runs/{dataset}/{task}/episodic/{backbone}/s{nshot}/{head}.tsv"
    threads: training_threads("episodic")
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss eval --checkpoint {input.model} --out $(dirname {output.metrics}) {params.sets}"
        " > {log} 2>&1"
