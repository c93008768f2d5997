# Tables: one local job per table reads only metrics.json files (the last step of each run) and
# writes results/tables/<name>.csv (+ .md, _runs.csv, _per_class.csv); ifss/results.py (few-shot
# tables) and ifss/continual_results.py (continual tables) do the pandas work. Methods not
# registered yet are left out (one warning at start).


rule table:
    input:
        metrics=table_inputs,
    output:
        csv=report(
            TABLE_FILES["csv"],
            caption="../workflow/report/table.rst",
            category="Tables",
            labels={"table": "{table}", "content": "summary"},
        ),
        md=TABLE_FILES["md"],
        runs=report(
            TABLE_FILES["runs"],
            caption="../workflow/report/runs.rst",
            category="Tables",
            labels={"table": "{table}", "content": "every run"},
        ),
        per_class=report(
            TABLE_FILES["per_class"],
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
