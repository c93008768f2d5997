# Datasets: the synthetic benchmark (`ifss synth`), real downloads (`ifss download`: checksummed,
# safely extracted, converted, completion marker written last), datasets derived from other
# configured ones (coco-voc: `ifss coco-voc` from the prepared COCO and VOC, marker written last)
# and the per-class image index (`ifss splits`, of the "train" split). One rule per configured
# dataset, because each dataset folder is configured.


for _name, _ds in MATRIX.datasets.items():
    if _ds["source"] == "synth":

        rule:
            name:
                f"synth_{_name}"
            output:
                marker=MATRIX.dataset_marker(_name),
            params:
                out=marker_dir,
                seed=_ds["synth"]["seed"],
                train=_ds["synth"]["train"],
                val=_ds["synth"]["val"],
                size=_ds["synth"]["size"],
            log:
                f"logs/data/{_name}.log",
            conda:
                "../envs/ifss.yaml"
            shell:
                "ifss synth --out {params.out} --seed {params.seed} --train {params.train}"
                " --val {params.val} --size {params.size} > {log} 2>&1"

    elif _ds["source"] == "download":

        rule:
            name:
                f"download_{_name}"
            output:
                marker=MATRIX.dataset_marker(_name),
            params:
                dataset=_name,
                root=download_root,
                extra=MATRIX.download_args(_name),
            log:
                f"logs/data/{_name}.log",
            localrule: _ds["download"]["local"]
            retries: 2
            conda:
                "../envs/ifss.yaml"
            shell:
                "ifss download {params.dataset} --root {params.root} {params.extra} > {log} 2>&1"

    elif _ds["source"] == "derived":

        rule:
            name:
                f"derive_{_name.replace('-', '_')}"
            input:
                **MATRIX.derived_inputs(_name),
            output:
                marker=MATRIX.dataset_marker(_name),
            params:
                command=_name,  # the converter is the subcommand named after the dataset
                out=marker_dir,
                inputs=MATRIX.derived_args(_name),
            log:
                f"logs/data/{_name}.log",
            threads: 4
            conda:
                "../envs/ifss.yaml"
            shell:
                "ifss {params.command} {params.inputs} --out {params.out} --workers {threads}"
                " > {log} 2>&1"


rule class_index:
    input:
        unpack(class_index_inputs),
    output:
        paths.class_index_path("{dataset}"),
    params:
        root=dataset_root,
    log:
        "logs/data/{dataset}.class_index.log",
    threads: 4
    conda:
        "../envs/ifss.yaml"
    shell:
        "ifss splits --dataset {wildcards.dataset} --root {params.root} --out {output} > {log} 2>&1"
