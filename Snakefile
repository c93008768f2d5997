# ifss workflow: raw data -> runs -> the papers' tables.
#
#   snakemake --cores all                                          # the embedded synthetic demo
#   (add --workflow-profile workflow/profiles/default for keep-going, rerun-incomplete, logs)
#   snakemake --cores all --configfile config/papers/pifs_voc.yaml # a paper matrix (local GPUs:
#                                                                  #   add --resources gpu=N)
#   snakemake --workflow-profile workflow/profiles/slurm --configfile ...   # on SLURM
#   snakemake ... results/tables/pifs_voc.csv                      # one table
#   snakemake ... results/figures/mclos_vs_pifs/tsne.png           # one figure
#   snakemake --cores all --configfile config/papers/sdr_voc.yaml  # SDR / MiB suite on VOC
#   snakemake ... results/runs/voc/5-0/PIFS/s1-i0/step1/metrics.json       # one run
#   snakemake ... results/runs/voc/15-1/overlap/MIB/step5/metrics.json     # one continual run
#   snakemake ... results/runs/voc/5-0/episodic/PSP/s1/generalized-g10/metrics.json  # GFSS
#   snakemake ... results/runs/ade/ws1/weakshot/SimFormer-RT/step1/metrics.json  # weak-shot
#
# The default config (beside this file) is read only when no --configfile is given, so a paper
# config is never mixed with the demo's matrix (several --configfile files merge with each other).

if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


wildcard_constraints:
    dataset=r"[a-z][a-z0-9_-]*",  # coco-voc
    task=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    method=r"[A-Za-z][A-Za-z0-9_-]*",
    base=r"[A-Za-z][A-Za-z0-9_-]*",  # PSP-CTR
    backbone=r"[A-Za-z][A-Za-z0-9_-]*",
    head=r"binary|generalized-g[0-9][0-9.e+-]*",
    nshot=r"\d+",
    ishot=r"\d+",
    step=r"\d+",
    protocol=r"disjoint|overlap|sequential",
    table=r"(?!.*_(?:runs|per_class)$)[A-Za-z0-9][A-Za-z0-9_.-]*",
    name=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    figure=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/weights.smk"
include: "rules/train.smk"
include: "rules/weakshot.smk"
include: "rules/episodic.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"
include: "rules/bench.smk"


# Local runs fork every job's run from one warm `ifss fork-server` (config fork_server).
onstart:
    start_fork_server()


onsuccess:
    stop_fork_server()


onerror:
    stop_fork_server()


rule all:
    input:
        MATRIX.all_targets(),
    default_target: True
    localrule: True
