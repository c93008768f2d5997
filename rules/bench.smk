# `ifss bench`: speed and memory against bare PyTorch. On demand only (not part of `all`):
#   snakemake --cores all results/bench/cpu.json        (results/bench/cuda.json on a GPU)
# It runs locally (also under the SLURM profile) on every core, so no other job disturbs the
# measurement; `--config bench_quick=True` gives the CI-sized run.


rule bench:
    localrule: True
    output:
        json="results/bench/{device}.json",
        md="results/bench/{device}.md",
    wildcard_constraints:
        device="cpu|cuda",
    params:
        quick=bench_quick_flag,
    log:
        "logs/bench/{device}.log",
    threads: 256  # capped at --cores: the measurement gets the whole machine
    resources:
        gpu=bench_gpus,
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss bench --device {wildcards.device} {params.quick} --out results/bench > {log} 2>&1"
