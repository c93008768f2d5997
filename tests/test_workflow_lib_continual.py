"""The workflow library's continual runs (ifss/workflow/) without Snakemake: the layout, step-0
sharing, settings layered with `protocol`, the jobs' inputs and `--set` arguments, continual tables
and per-step figures as targets, their config checks (method params included), and the SDR paper
configs merged with the PIFS ones."""
from __future__ import annotations

import copy

import pytest
import yaml

from ifss.config import merge
from ifss.errors import IfssError
from ifss.workflow import paths
from ifss.workflow.settings import run_layers, run_settings
from test_workflow_lib import PAPER_CONFIGS, SDR_CONFIGS, edited, load

CSS = edited(lambda c: (
    c["datasets"]["synthetic"].update(
        continual_step0={"train": {"lr": 0.05, "iterations": 50}},
        continual={"train": {"lr": 0.005, "iterations": 7}, "data": {"batch_size": 4}}),
    c["methods"].update({
        "MIB": {"params": {"loss_kd": 10.0}, "continual": {"params": {"loss_kd": 100.0}}},
        "MIB-x": {"method": "MIB", "continual": {"train": {"epochs": 2}}}}),
    c["overrides"].update(
        ov={"when": {"protocol": "overlap", "stage": "continual"}, "set": {"train": {"lr": 0.9}}},
        s0={"when": {"protocol": ["disjoint"], "stage": "step0"},
            "set": {"train": {"momentum": 0.7}}},
        fs={"when": {"protocol": "fewshot"}, "set": {"train": {"nesterov": True}}}),
    c["tables"].update(css={"kind": "continual", "dataset": "synthetic", "tasks": ["15-5", "15-1"],
                            "protocols": {"15-5": ["disjoint", "overlap"], "15-1": ["sequential"]},
                            "methods": ["FT", "MIB-x"]}),
    c["figures"].update(steps={"kind": "per_step", "dataset": "synthetic", "task": "15-1",
                               "protocol": "sequential", "methods": ["FT", "MIB"]}),
))


def test_continual_paths():
    assert paths.continual_step0_dir("voc", "15-5", "overlap", "FT") == \
        "results/runs/voc/15-5/overlap/step0/FT"
    assert paths.continual_step_dir("voc", "15-1", "disjoint", "MIB", 3) == \
        "results/runs/voc/15-1/disjoint/MIB/step3"
    assert paths.run_dir("voc", "15-1", "MIB", 3, 5, 0, "overlap") == \
        "results/runs/voc/15-1/overlap/MIB/step3"
    assert paths.run_dir("voc", "15-5", "FT", 0, 5, 0, "sequential") == \
        "results/runs/voc/15-5/disjoint/step0/FT"  # sequential starts from disjoint's step 0
    assert paths.run_dir("voc", "5-0", "FT", 0, 5, 0) == "results/runs/voc/5-0/step0/FT"
    assert paths.continual_step_dir("{dataset}", "{task}", "{protocol}", "{method}", "{step}") == \
        "results/runs/{dataset}/{task}/{protocol}/{method}/step{step}"
    from ifss.config import PROTOCOLS

    assert ("fewshot", *paths.CONTINUAL, paths.WEAKSHOT) == PROTOCOLS and \
        set(paths.STEP0_PROTOCOL) == set(paths.CONTINUAL)  # weakshot: no step-0 run
    assert paths.figure_files("f", "per_step") == {"plot": "results/figures/f/per_step.png",
                                                   "csv": "results/figures/f/per_step.csv"}


@pytest.mark.parametrize("dataset, task, shared", [
    ("voc", "15-1", "15-5"),      # not fold 5-3, which has the same step-0 classes
    ("voc", "15-5", "15-5"), ("voc", "10-1", "10-10"), ("voc", "10-5-5", "10-10"),
    ("voc", "19-1", "19-1"), ("voc", "5-3m", "5-3"), ("synthetic", "15-1", "15-5"),
    ("coco", "20-2m", "20-2"),
])
def test_step0_sharing(dataset, task, shared):
    from ifss.workflow.targets import step0_task

    assert step0_task(dataset, task) == shared


def test_continual_settings_layer_with_protocol():
    matrix = load(CSS)
    cfg = matrix.config
    layers = run_layers(cfg, "synthetic", "15-5", "MIB-x", "continual", step=1, protocol="overlap")
    assert [where for where, _ in layers] == [
        "run", "datasets.synthetic.run", "datasets.synthetic.continual", "methods.MIB",
        "methods.MIB.continual", "methods.MIB-x", "methods.MIB-x.continual", "overrides.ov.set"]
    assert run_settings(cfg, "synthetic", "15-5", "MIB-x", "continual", step=1,
                        protocol="overlap") == {
        "seed": 1, "train": {"lr": 0.9, "momentum": 0.1, "weight_decay": 0.2, "iterations": 7,
                             "epochs": 2},
        "data": {"batch_size": 4}, "params": {"loss_kd": 100.0}}
    # disjoint steps: no overlap override; step 0: continual_step0 and the step-0 override
    assert run_settings(cfg, "synthetic", "15-5", "MIB", "continual", step=1,
                        protocol="disjoint")["train"]["lr"] == 0.005
    step0 = run_layers(cfg, "synthetic", "15-5", "FT", "step0", protocol="disjoint")
    assert [where for where, _ in step0] == [
        "run", "datasets.synthetic.run", "datasets.synthetic.continual_step0", "methods.FT",
        "methods.FT.step0", "overrides.s0.set"]
    # few-shot runs read none of it, and match protocol fewshot
    fewshot = run_settings(cfg, "synthetic", "5-0", "MIB", "fewshot", "SS", 1, 0, 1)
    assert fewshot["train"] == {"lr": 0.3, "momentum": 0.1, "weight_decay": 0.2, "lr_head": 0.3,
                                "nesterov": True}
    assert fewshot["params"] == {"loss_kd": 10.0}


def test_continual_jobs_inputs_and_sets():
    matrix = load(CSS)
    # 15-1 starts from 15-5's step 0; sequential from the disjoint one
    assert matrix.continual_step_inputs("synthetic", "15-1", "sequential", "MIB-x", "1") == \
        {"previous": "results/runs/synthetic/15-5/disjoint/step0/FT/model.pt"}
    assert matrix.continual_step_inputs("synthetic", "15-1", "overlap", "FT", "1") == \
        {"previous": "results/runs/synthetic/15-5/overlap/step0/FT/model.pt"}
    assert matrix.continual_step_inputs("synthetic", "15-1", "sequential", "MIB-x", "4") == \
        {"previous": "results/runs/synthetic/15-1/sequential/MIB-x/step3/model.pt"}
    sets = matrix.continual_step_sets("synthetic", "15-1", "sequential", "MIB-x", "4")
    assert sets.startswith(
        "--set dataset=synthetic --set task=15-1 --set step=4 --set method=MIB --set label=MIB-x "
        "--set data.protocol=sequential --set data.root=data/synthetic "
        "--set data.class_index=resources/splits/synthetic/class_index.json --set seed=1 ")
    assert "nshot" not in sets and "--set params.loss_kd=100.0" in sets
    step0 = matrix.step0_sets("synthetic", "15-5", "FT", "overlap")
    assert step0.startswith("--set dataset=synthetic --set task=15-5 --set step=0 --set method=FT "
                            "--set data.protocol=overlap --set data.root=data/synthetic ")
    assert "--set train.iterations=50" in step0 and "momentum=0.7" not in step0
    assert "--set train.momentum=0.7" in matrix.step0_sets("synthetic", "15-5", "FT", "disjoint")
    assert "data.protocol" not in matrix.step0_sets("synthetic", "5-0", "FT")  # few-shot as before
    assert matrix.threads("synthetic", "continual") == 4


@pytest.mark.parametrize("call, message", [
    (lambda m: m.step0_inputs("synthetic", "15-5", "FT", "sequential"),
     "sequential runs start from the disjoint step-0 run"),
    (lambda m: m.continual_step_inputs("synthetic", "15-5", "ovrlap", "FT", "1"),
     "unknown protocol 'ovrlap' (did you mean overlap?)"),
    (lambda m: m.continual_step_inputs("synthetic", "15-5", "overlap", "FT", "2"),
     "task '15-5' has continual steps 1..1, not step2 (step-0 runs are "
     "results/runs/synthetic/15-5/overlap/step0/<base>/)"),
    (lambda m: m.per_step_inputs("f"), "figure 'f' is a comparison figure: it makes "
                                       "results/figures/f/qualitative.png"),
    (lambda m: m.figure_inputs("steps"), "figure 'steps' is a per_step figure"),
])
def test_continual_request_errors(call, message):
    with pytest.raises(IfssError) as err:
        call(load(CSS))
    assert message in str(err.value)


def test_targets_of_a_continual_table_and_figure():
    matrix = load(CSS)
    assert matrix.table_metrics("css") == [
        "results/runs/synthetic/15-5/disjoint/FT/step1/metrics.json",
        "results/runs/synthetic/15-5/disjoint/MIB-x/step1/metrics.json",
        "results/runs/synthetic/15-5/overlap/FT/step1/metrics.json",
        "results/runs/synthetic/15-5/overlap/MIB-x/step1/metrics.json",
        "results/runs/synthetic/15-1/sequential/FT/step5/metrics.json",
        "results/runs/synthetic/15-1/sequential/MIB-x/step5/metrics.json"]
    spec = matrix.table_spec("css")
    assert (spec["kind"], spec["tasks"], spec["protocols"]) == \
        ("continual", ["15-5", "15-1"], ["disjoint", "overlap", "sequential"])
    assert "kind" not in matrix.table_spec("t")  # a few-shot table's spec is unchanged
    targets = matrix.all_targets()
    assert targets[-2:] == ["results/figures/steps/per_step.png",
                            "results/figures/steps/per_step.csv"]
    assert "results/tables/css_per_class.csv" in targets
    runs = matrix.per_step_runs("steps")
    assert runs["MIB"][:3] == ["results/runs/synthetic/15-5/disjoint/step0/FT/metrics.json",
                               "results/runs/synthetic/15-1/sequential/MIB/step1/metrics.json",
                               "results/runs/synthetic/15-1/sequential/MIB/step2/metrics.json"]
    assert len(runs["FT"]) == 6 and len(matrix.per_step_inputs("steps")) == 12
    assert matrix.per_step_spec("steps")["title"] == \
        "synthetic 15-1 sequential: mIoU after each step"


def _css(edit):
    cfg = copy.deepcopy(CSS)
    edit(cfg)
    return cfg


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["tables"]["css"].update(shots=[1]),
     "tables.css.shots: a continual table (every image with a class of the step trains) has no "
     "shots; remove it"),
    (lambda c: c["tables"]["t"].update(protocols=["disjoint"]),
     "tables.t.protocols: a few-shot table has no protocols; remove it"),
    (lambda c: c["tables"]["css"].pop("protocols"),
     "config key 'tables.css': 'protocols' is a required property"),
    (lambda c: c["tables"]["css"].update(protocols=["disjont"]),
     "config key 'tables.css.protocols.0': 'disjont' is not one of ['disjoint', 'overlap', "
     "'sequential', 'weakshot']"),
    (lambda c: c["tables"]["css"].update(protocols={"15-5": ["disjoint"], "15-1": ["x"]}),
     "config key 'tables.css.protocols.15-1.0': 'x' is not one of"),
    (lambda c: c["tables"]["css"].update(protocols={"15-5": ["disjoint"]}),
     "tables.css.protocols: no protocols for task '15-1'; give a list for each task"),
    (lambda c: c["tables"]["css"]["protocols"].update({"10-1": ["overlap"]}),
     "tables.css.protocols: '10-1' is not one of tables.css.tasks (15-5, 15-1)"),
    (lambda c: c["figures"]["steps"].update(nshot=1),
     "figures.steps.nshot: a per_step figure has no nshot; remove it"),
    (lambda c: c["figures"]["steps"].pop("protocol"),
     "config key 'figures.steps': 'protocol' is a required property"),
    (lambda c: c["figures"]["f"].update(protocol="overlap"),
     "figures.f.protocol: a comparison figure has no protocol; remove it"),
    (lambda c: c["overrides"].update(x={"when": {"protocol": "overlapped"}, "set": {}}),
     "overrides.x.when.protocol: 'overlapped' is not one of fewshot, disjoint, overlap, "
     "sequential"),
    (lambda c: c["overrides"].update(x={"when": {"protocol": "sequential", "stage": "step0"},
                                        "set": {}}),
     "overrides.x.when: sequential runs start from the disjoint step-0 run"),
    (lambda c: c["datasets"]["synthetic"]["continual"].update(data={"protocol": "overlap"}),
     "datasets.synthetic.continual.data.protocol is set by the workflow for each run"),
    (lambda c: c["methods"].update(overlap={}), "methods.overlap: 'overlap' names a folder"),
    # method params of continual runs: stage sections and overrides that can reach them
    (lambda c: c["methods"]["MIB"]["continual"]["params"].update(los_kd=1.0),
     "in methods.MIB.continual: unknown config key 'params.los_kd'"),
    (lambda c: c["overrides"].update(o={"when": {"stage": "continual"},
                                        "set": {"params": {"loss_kd": 1.0}}}),
     "in overrides.o.set (FT's continual steps): FT has no params, got params.loss_kd"),
    (lambda c: c["datasets"]["synthetic"]["continual_step0"].update(params={"x": 1}),
     "in datasets.synthetic.continual_step0 (FT's step-0 run): FT has no params, got params.x"),
])
def test_continual_config_errors(edit, message):
    with pytest.raises(IfssError) as err:
        load(_css(edit))
    assert message in str(err.value)


def test_params_of_continual_runs_that_cannot_happen_are_not_checked():
    """An override whose `when` no run can meet (few-shot steps of a continual protocol,
    continual steps of a few-shot setting) is not checked; one that can is."""
    load(_css(lambda c: c["overrides"].update(
        a={"when": {"protocol": "overlap", "stage": "fewshot"}, "set": {"params": {"x": 1}}},
        b={"when": {"setting": "SS", "stage": "continual"}, "set": {"params": {"x": 1}}},
        c={"when": {"protocol": "overlap", "method": "MIB"}, "set": {"params": {"loss_kd": 3.0}}})))
    with pytest.raises(IfssError, match=r"in overrides.p.set \(FT's step-0 run\)"):
        load(_css(lambda c: c["overrides"].update(
            p={"when": {"protocol": "fewshot"}, "set": {"params": {"loss_kd": 1.0}}})))


def test_sdr_and_pifs_configs_merge_without_changing_the_few_shot_runs():
    """`--configfile pifs_voc.yaml sdr_voc.yaml`: every few-shot run keeps its arguments, every
    continual run gets the SDR file's (the MiB values of LWF, ILT, MIB are continual-stage)."""
    pifs, sdr = (yaml.safe_load(p.read_text()) for p in (PAPER_CONFIGS[0], SDR_CONFIGS[0]))
    assert sdr["run"] == pifs["run"] and sdr["include"][0] == pifs["include"][0]
    assert sdr["datasets"]["voc"]["run"] == pifs["datasets"]["voc"]["run"]
    alone, both = load(pifs), load(merge(pifs, sdr))
    for method in pifs["tables"]["pifs_voc"]["methods"]:
        for task, step in (("5-1", 1), ("5-2m", 3)):
            if alone.is_registered(method):
                assert both.step_sets("voc", task, method, 1, 0, step) == \
                    alone.step_sets("voc", task, method, 1, 0, step), method
    sdr_alone = load(sdr)
    for method in ("LWF", "ILT", "MIB", "SDR"):
        if sdr_alone.is_registered(method):
            assert both.continual_step_sets("voc", "15-1", "overlap", method, 2) == \
                sdr_alone.continual_step_sets("voc", "15-1", "overlap", method, 2), method


def test_sdr_configs_share_run_and_methods():
    """sdr_voc.yaml and sdr_ade.yaml merge: the same `run` and `include` (both methods files),
    no `methods` of their own, their datasets and overrides apart."""
    voc, ade = (yaml.safe_load(p.read_text()) for p in SDR_CONFIGS)
    assert voc["run"] == ade["run"] and voc["include"] == ade["include"] == [
        "config/papers/pifs_methods.yaml", "config/papers/sdr_methods.yaml"]
    assert "methods" not in voc and "methods" not in ade
    assert not set(voc["datasets"]) & set(ade["datasets"])
    assert not set(voc.get("overrides", {})) & set(ade.get("overrides", {}))
    assert not set(voc["tables"]) & set(ade["tables"]) and not set(voc["figures"]) & set(
        ade["figures"])
