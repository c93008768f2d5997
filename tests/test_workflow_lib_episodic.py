"""The workflow library's episodic evaluations (GFSS) without Snakemake: the layout, the jobs'
inputs and `ifss eval` arguments, episodic tables as targets and their config checks."""
from __future__ import annotations

import pytest

from ifss.errors import IfssError
from ifss.workflow import paths
from test_workflow_lib import edited, load

ROWS = {"2-way": {"backbone": "FT", "head": "binary"},
        "B": {"backbone": "FT", "head": "generalized"},
        "DL": {"backbone": "FT", "head": "generalized", "gamma": 10},
        "DL-cos": {"backbone": "COS", "head": "generalized", "gamma": 2.5}}


def gfss(**table):
    spec = {"kind": "episodic", "dataset": "synthetic", "tasks": ["5-0", "5-1"],
            "shots": [1, 5], "rows": ROWS, "metrics": ["base", "novel"], "delta": "B", **table}
    return edited(lambda c: (
        c["datasets"]["synthetic"].update(episodic={"eval": {"episodes": 40}}),
        c["methods"].update(COS=None),
        c["tables"].update(gfss=spec)))


def test_episodic_paths():
    assert paths.episodic_head("binary") == "binary"
    assert paths.episodic_head("generalized", 10.0) == "generalized-g10"
    assert paths.episodic_head("generalized", 0.5) == "generalized-g0.5"
    assert paths.episodic_dir("voc", "5-0", "PSP", 1, "generalized-g10") == \
        "results/runs/voc/5-0/episodic/PSP/s1/generalized-g10"


def test_episodic_table_targets_its_evaluations_once_each():
    matrix = load(gfss())
    files = matrix.table_metrics("gfss")
    # 2 folds x 2 shots x 4 distinct evaluations (binary, g0, g10 of FT; g2.5 of COS)
    assert len(files) == len(set(files)) == 16
    assert "results/runs/synthetic/5-1/episodic/COS/s5/generalized-g2.5/metrics.json" in files
    spec = matrix.table_spec("gfss")
    assert spec["kind"] == "episodic" and spec["delta"] == "B"
    assert spec["rows"]["B"]["gamma"] == 0.0 and spec["metrics"] == ["base", "novel"]
    assert matrix.config["tables"]["gfss"]["methods"] == ["FT", "COS"]  # the backbones


def test_an_evaluation_reads_its_step0_run_and_gets_its_settings():
    matrix = load(gfss())
    inputs = matrix.episodic_inputs("synthetic", "5-1", "FT", "5", "generalized-g10")
    assert inputs["model"] == "results/runs/synthetic/5-1/step0/FT/model.pt"
    sets = matrix.episodic_sets("synthetic", "5-1", "FT", "5", "generalized-g10")
    for pair in ("eval.protocol=episodic", "nshot=5", "eval.head=generalized",
                 "eval.gamma=10.0", "eval.episodes=40", "data.root=data/synthetic"):
        assert f"--set {pair}" in sets, pair
    binary = matrix.episodic_sets("synthetic", "5-0", "FT", "1", "binary")
    assert "--set eval.head=binary" in binary and "--set nshot=1" in binary


@pytest.mark.parametrize("args, message", [
    (("synthetic", "15-1", "FT", "1", "binary"), "not a fold"),
    (("synthetic", "5-0", "LWF", "1", "binary"), "no step-0 run"),
    (("synthetic", "5-0", "FT", "1", "generalized-gx"), "unknown episodic head folder"),
    (("synthetic", "5-0", "FT", "1", "generalized-g10.0"), "unknown episodic head folder"),
])
def test_bad_evaluation_paths_are_one_sentence(args, message):
    with pytest.raises(IfssError, match=message):
        load(gfss()).episodic_inputs(*args)


@pytest.mark.parametrize("table, message", [
    ({"rows": {"x": {"backbone": "FT", "head": "binary", "gamma": 5}}, "delta": "x"},
     "binary head has no distillation"),
    ({"rows": {"x": {"backbone": "LWF", "head": "binary"}}, "delta": "x"}, "trains no step-0"),
    ({"tasks": ["15-1"]}, "is not a fold"),
    ({"delta": "C"}, "delta: 'C' is not one of"),
    ({"ishots": [0]}, "episodic table .* has no ishots"),
])
def test_episodic_table_checks(table, message):
    with pytest.raises(IfssError, match=message):
        load(gfss(**table))


def test_workflow_sets_the_protocol_head_and_gamma():
    cfg = gfss()
    cfg["datasets"]["synthetic"]["episodic"]["eval"]["head"] = "binary"
    with pytest.raises(IfssError, match="episodic.eval.head is set for each evaluation"):
        load(cfg)


def test_delta_of_fewshot_tables_names_a_method():
    def table(delta):
        return edited(lambda c: c["tables"].update(t={
            "dataset": "synthetic", "tasks": ["5-0"], "methods": ["FT"], "shots": [1],
            "ishots": [0], "delta": delta}))

    assert load(table("FT")).table_spec("t")["delta"] == "FT"
    with pytest.raises(IfssError, match="delta: 'PIFS' is not one of"):
        load(table("PIFS"))
