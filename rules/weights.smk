# ImageNet backbone weights. `ifss weights NAME --dest DIR` downloads and checks the file under its
# own name (or, for files that need a browser, verifies the one placed by hand and otherwise says
# where to put it); the rule links it as DIR/NAME.pth. Consumers use ancient(): a re-fetched copy
# of the same weights reruns nothing. The tiny CPU backbone needs no weights (weights: none).


rule weights:
    output:
        file=MATRIX.weights_path("{name}"),
    params:
        dest=weights_dest,
        mirror=weights_mirror,
    log:
        "logs/weights/{name}.log",
    localrule: True
    conda:
        "../envs/ifss.yaml"
    shell:
        'got=$(ifss weights {wildcards.name} --dest {params.dest} {params.mirror} 2> {log})'
        ' || {{ cat {log} >&2; exit 1; }}; got=$(basename "$got")'
        ' && if [ "$got" != "$(basename {output.file})" ]; then ln -sfn "$got" {output.file}; fi'
