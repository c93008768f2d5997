# Tables: one local job per table reads only metrics.json files (the last step of each run) and
# writes results/tables/<name>.csv (+ .md, _runs.csv, _per_class.csv); ifss/results.py does the
# pandas work. Methods not registered yet are left out (one warning at start).


rule table:
    input:
        metrics=table_inputs,
    output:
        csv=report(
            "results/tables/{table}.csv",
            caption="../workflow/report/table.rst",
            category="Tables",
            labels={"table": "{table}", "content": "methods x setting x shot"},
        ),
        md="results/tables/{table}.md",
        runs=report(
            "results/tables/{table}_runs.csv",
            caption="../workflow/report/runs.rst",
            category="Tables",
            labels={"table": "{table}", "content": "every run"},
        ),
        per_class=report(
            "results/tables/{table}_per_class.csv",
            caption="../workflow/report/per_class.rst",
            category="Tables",
            labels={"table": "{table}", "content": "per-class IoU"},
        ),
    params:
        spec=table_spec,
    log:
        "logs/tables/{table}.log",
    localrule: True
    conda:
        "../envs/ifss.yaml"
    script:
        "../workflow/scripts/make_table.py"
