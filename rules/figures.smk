# Figures: per `figures` entry of kind comparison, the qualitative comparison (image, ground
# truth, each run's masks in the dataset palette) and a t-SNE of pixel embeddings, from the
# compared runs' model.pt (ifss/figures.py does the work); per entry of kind per_step, the mIoU
# of all classes after each step of a continual task, one line per method, from the metrics.json
# of every step (ifss/continual_results.py). All go into the `snakemake --report` HTML.
#
# A figure reads its own copies of the models: few-shot models are temp() files, and once one
# is deleted a figure rerun (say, after one compared method's settings change) would otherwise
# retrain every other compared run too.

import shutil


rule figure_model:
    input:
        figure_model_source,
    output:
        paths.figure_model("{figure}", "{method}"),
    log:
        "logs/figures/{figure}/{method}.log",
    localrule: True
    run:
        shutil.copyfile(input[0], output[0])


rule figures:
    input:
        unpack(figure_inputs),
    output:
        qualitative=report(
            FIGURE_FILES["qualitative"],
            caption="../workflow/report/qualitative.rst",
            category="Figures",
            labels={"figure": "{figure}", "content": "qualitative"},
        ),
        tsne=report(
            FIGURE_FILES["tsne"],
            caption="../workflow/report/tsne.rst",
            category="Figures",
            labels={"figure": "{figure}", "content": "t-SNE"},
        ),
    params:
        spec=figure_params,
    log:
        "logs/figures/{figure}.log",
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/ifss.yaml"
    script:
        "../workflow/scripts/figures.py"


rule figure_per_step:
    input:
        metrics=per_step_inputs,
    output:
        plot=report(
            PER_STEP_FILES["plot"],
            caption="../workflow/report/per_step.rst",
            category="Figures",
            labels={"figure": "{figure}", "content": "mIoU per step"},
        ),
        csv=PER_STEP_FILES["csv"],
    params:
        spec=per_step_spec,
    log:
        "logs/figures/{figure}.per_step.log",
    localrule: True
    conda:
        "../envs/ifss.yaml"
    script:
        "../workflow/scripts/per_step.py"
