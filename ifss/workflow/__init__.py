"""The Snakemake workflow's logic, torch-free and testable without Snakemake.

    include.py    `include:` config files merged under the config naming them
    schema.py     the JSON schema: defaults filled in, a violation as one sentence
    checks.py     what the schema cannot check: names, run fragments, every method's params
    settings.py   one run's settings layered from the config; `--set` arguments
    paths.py      the results layout (the rules' output patterns, the CLI's default folder)
    targets.py    each table's runs, the figures, the default targets
    matrix.py     `Matrix`: a loaded config answering the rules' input functions

rules/common.smk builds one `Matrix` when Snakemake loads the workflow and turns the IfssError
it raises into Snakemake's WorkflowError.
"""
