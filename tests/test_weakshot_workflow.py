"""The workflow's weak-shot runs (SimFormer): the layout, settings layered with stage and protocol
weakshot, the jobs' inputs and `--set` arguments (ImageNet weights, pseudo labels), the config
checks, weak-shot tables from hand-made metrics files, and dry runs of a small config, the demo
and the paper config. No training job runs here."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ifss.errors import IfssError
from ifss.workflow import paths
from ifss.workflow.settings import run_layers, run_settings
from test_workflow import ROOT, job_counts, snakemake, write_config
from test_workflow_lib import edited, load

SIMFORMER_CONFIG = ROOT / "config" / "papers" / "simformer.yaml"
ABLATION = ["SimFormer-base", "SimFormer", "SimFormer-sim", "SimFormer-RT"]

WS = edited(lambda c: (
    c["datasets"]["synthetic"].update(weakshot={"train": {"iterations": 9},
                                                "data": {"batch_size": 4}}),
    c["methods"].update({
        "SimFormer": {"params": {"comp_weight": 0.15},
                      "weakshot": {"model": {"arch": "maskformer", "num_queries": 10},
                                   "train": {"optimizer": "adamw"}}},
        "SimFormer-base": {"method": "SimFormer", "params": {"comp_weight": 0.0}},
        "SimFormer-sim": {"method": "SimFormer", "params": {"crosim": True}},
        "SimFormer-RT": {"method": "SimFormer", "params": {"retrain": True, "comp_weight": 0.0},
                         "pseudo_labels": "SimFormer-sim", "weakshot": {"train": {"lr": 0.5}}}}),
    c["overrides"].update(ws={"when": {"protocol": "weakshot", "method": "SimFormer-sim"},
                              "set": {"data": {"batch_size": 2}}}),
    c["tables"].update(ws={"kind": "continual", "dataset": "synthetic", "tasks": ["15-5"],
                           "protocols": ["weakshot"], "methods": ABLATION}),
))


def _ws(edit) -> dict:
    cfg = copy.deepcopy(WS)
    edit(cfg)
    return cfg


# ----------------------------------------------------------------------------- library


def test_weakshot_paths():
    assert paths.weakshot_dir("ade", "ws1", "SimFormer-RT") == \
        "results/runs/ade/ws1/weakshot/SimFormer-RT/step1"
    assert paths.run_dir("ade", "ws1", "SimFormer", 1, 5, 0, "weakshot") == \
        "results/runs/ade/ws1/weakshot/SimFormer/step1"
    assert paths.pseudo_dir("ade", "ws1", "SimFormer-sim") == \
        "results/pseudo/ade/ws1/SimFormer-sim"
    from ifss.cli import default_run_dir
    from ifss.config import build_config

    cfg = build_config(None, ["task=15-5", "step=1", "method=SimFormer", "label=SimFormer-sim",
                              "data.protocol=weakshot"])
    assert default_run_dir(cfg) == Path("results/runs/synthetic/15-5/weakshot/SimFormer-sim/step1")


def test_weakshot_settings_layer_with_stage_and_protocol():
    cfg = load(WS).config
    layers = run_layers(cfg, "synthetic", "15-5", "SimFormer-sim", "weakshot", step=1,
                        protocol="weakshot")
    assert [where for where, _ in layers] == [
        "run", "datasets.synthetic.run", "datasets.synthetic.weakshot", "methods.SimFormer",
        "methods.SimFormer.weakshot", "methods.SimFormer-sim", "methods.SimFormer-sim.weakshot",
        "overrides.ws.set"]
    assert run_settings(cfg, "synthetic", "15-5", "SimFormer-RT", "weakshot", step=1,
                        protocol="weakshot") == {
        "seed": 1, "train": {"lr": 0.5, "momentum": 0.1, "weight_decay": 0.2, "iterations": 9,
                             "optimizer": "adamw"},
        "data": {"batch_size": 4}, "model": {"arch": "maskformer", "num_queries": 10},
        "params": {"comp_weight": 0.0, "retrain": True}}


def test_weakshot_jobs_inputs_and_sets():
    matrix = load(WS)
    # no step-0 run, no previous model: data, class index (weights none: nothing more)
    assert matrix.weakshot_inputs("synthetic", "15-5", "SimFormer-sim", "1") == {
        "data": "data/synthetic/meta.json",
        "class_index": "resources/splits/synthetic/class_index.json"}
    assert matrix.weakshot_inputs("synthetic", "15-5", "SimFormer-RT", "1")["pseudo_labels"] == \
        "results/pseudo/synthetic/15-5/SimFormer-sim"
    sets = matrix.weakshot_sets("synthetic", "15-5", "SimFormer-RT", "1")
    assert sets.startswith(
        "--set dataset=synthetic --set task=15-5 --set step=1 --set method=SimFormer "
        "--set label=SimFormer-RT --set data.protocol=weakshot --set data.root=data/synthetic "
        "--set data.class_index=resources/splits/synthetic/class_index.json "
        "--set data.train_labels=results/pseudo/synthetic/15-5/SimFormer-sim --set seed=1 ")
    assert "--set params.retrain=true" in sets and "previous" not in sets
    assert "model.pretrained" not in sets and "nshot" not in sets
    sim = matrix.weakshot_sets("synthetic", "15-5", "SimFormer-sim", "1")
    assert "--set data.batch_size=2" in sim and "train_labels" not in sim
    assert matrix.pseudo_inputs("synthetic", "15-5", "SimFormer-sim") == {
        "model": "results/runs/synthetic/15-5/weakshot/SimFormer-sim/step1/model.pt",
        "data": "data/synthetic/meta.json",
        "class_index": "resources/splits/synthetic/class_index.json"}
    assert matrix.pseudo_sets("synthetic", "15-5", "SimFormer-sim") == (
        "--set data.root=data/synthetic "
        "--set data.class_index=resources/splits/synthetic/class_index.json")
    assert matrix.threads("synthetic", "weakshot") == 4
    # ImageNet weights, as a step-0 run gets them
    weights = load(_ws(lambda c: c["datasets"]["synthetic"].update(weights="resnet18")))
    assert weights.weakshot_inputs("synthetic", "15-5", "SimFormer", "1")["weights"] == \
        "resources/weights/resnet18.pth"
    assert "--set data.class_index=resources/splits/synthetic/class_index.json " \
        "--set model.pretrained=resources/weights/resnet18.pth --set seed=1 " in \
        weights.weakshot_sets("synthetic", "15-5", "SimFormer", "1")


def test_weakshot_table_targets_and_spec():
    matrix = load(WS)
    assert matrix.table_metrics("ws") == [
        f"results/runs/synthetic/15-5/weakshot/{m}/step1/metrics.json" for m in ABLATION]
    spec = matrix.table_spec("ws")
    assert (spec["kind"], spec["protocols"], spec["metrics"]) == \
        ("continual", ["weakshot"], ["base", "novel", "all", "hm"])
    assert "metrics" not in load(_ws(lambda c: c["tables"].update(css={
        "kind": "continual", "dataset": "synthetic", "tasks": ["15-5"],
        "protocols": ["disjoint"], "methods": ["FT"]}))).table_spec("css")


@pytest.mark.parametrize("call, message", [
    (lambda m: m.weakshot_inputs("synthetic", "15-5", "FT", "1"),
     "method 'FT' is not a weak-shot method, so it has no weakshot runs; weak-shot methods: "
     "SimFormer (and their variants)"),
    (lambda m: m.weakshot_inputs("synthetic", "15-5", "SimFormer", "2"),
     "a weak-shot run is step 1 of its task (from ImageNet weights, no step-0 run), not step2; "
     "request results/runs/synthetic/15-5/weakshot/SimFormer/step1/"),
    (lambda m: m.weakshot_inputs("synthetic", "15-1", "SimFormer", "1"),
     "task '15-1' has 6 steps, but a weak-shot run is step 1 of a two-step task"),
    (lambda m: m.continual_step_inputs("synthetic", "15-5", "disjoint", "SimFormer-sim", "1"),
     "method 'SimFormer-sim' is a weak-shot method: it runs only under protocol weakshot, as "
     "results/runs/synthetic/15-5/weakshot/SimFormer-sim/step1/"),
    (lambda m: m.step_inputs("synthetic", "5-0", "SimFormer", "1", "0", "1"),
     "method 'SimFormer' is a weak-shot method: it runs only under protocol weakshot"),
    (lambda m: m.step0_inputs("synthetic", "15-5", "SimFormer", "disjoint"),
     "method 'SimFormer' is a weak-shot method: it trains from ImageNet weights with no step-0 "
     "run"),
    (lambda m: m.pseudo_inputs("synthetic", "15-5", "MIB"), "method 'MIB' is not a weak-shot"),
])
def test_weakshot_request_errors(call, message):
    with pytest.raises(IfssError) as err:
        call(load(WS))
    assert message in str(err.value)


@pytest.mark.parametrize("edit, message", [
    # a non-weak-shot method under weakshot; a weak-shot one elsewhere
    (lambda c: c["tables"]["ws"]["methods"].append("FT"),
     "tables.ws.methods: 'FT' is not a weak-shot method, so it has no weakshot runs; weak-shot "
     "methods: SimFormer (and their variants)"),
    (lambda c: c["tables"]["t"]["methods"].append("SimFormer-sim"),
     "tables.t.methods: 'SimFormer-sim' is a weak-shot method: it runs only under protocol "
     "weakshot; put it in a continual table with protocols: [weakshot]"),
    (lambda c: c["tables"].update(css={"kind": "continual", "dataset": "synthetic",
                                       "tasks": ["15-5"], "protocols": ["overlap"],
                                       "methods": ["FT", "SimFormer"]}),
     "tables.css.methods: 'SimFormer' is a weak-shot method"),
    (lambda c: c["figures"]["f"]["methods"].append("SimFormer"),
     "figures.f.methods: 'SimFormer' is a weak-shot method"),
    (lambda c: c["figures"].update(s={"kind": "per_step", "dataset": "synthetic", "task": "15-5",
                                      "protocol": "weakshot", "methods": ["SimFormer"]}),
     "config key 'figures.s.protocol': 'weakshot' is not one of"),
    (lambda c: c["tables"]["ws"].update(protocols=["weakshot", "disjoint"]),
     "tables.ws.protocols: weakshot runs only weak-shot methods, so it shares no table with "
     "disjoint; give the weak-shot runs a table of their own"),
    (lambda c: c["tables"]["ws"].update(tasks=["15-5", "15-1"]),
     "tables.ws.tasks: '15-1' has 6 steps, but a weak-shot run is step 1 of a two-step task"),
    # the table's columns
    (lambda c: c["tables"]["ws"].update(metrics=["novel", "fb_iou"]),
     "tables.ws.metrics: 'fb_iou' is no column of a weak-shot table; use some of base, novel, "
     "all, hm, fwiou, macc, pacc, macc_base, macc_novel"),
    (lambda c: c["tables"].update(g={"kind": "episodic", "dataset": "synthetic",
                                     "tasks": ["5-0"], "shots": [1], "metrics": ["hm"],
                                     "rows": {"r": {"backbone": "FT", "head": "binary"}}}),
     "tables.g.metrics: 'hm' is no column of an episodic table; use some of novel, base, "
     "fb_iou"),
    (lambda c: c["tables"].update(css={"kind": "continual", "dataset": "synthetic",
                                       "tasks": ["15-5"], "protocols": ["overlap"],
                                       "methods": ["FT"], "metrics": ["base"]}),
     "tables.css.metrics: a continual table (weak-shot tables only: protocols [weakshot]) has "
     "no metrics; remove it"),
    # pseudo-label sources
    (lambda c: c["methods"]["SimFormer-RT"].update(pseudo_labels="SimFormer-x"),
     "methods.SimFormer-RT.pseudo_labels: 'SimFormer-x' is not under methods (configured: "),
    (lambda c: c["methods"]["SimFormer-RT"].update(pseudo_labels="PIFS"),
     "methods.SimFormer-RT.pseudo_labels: 'PIFS' is not a weak-shot method (those are: SimFormer "
     "and their variants), so it makes no pseudo labels; name a weak-shot variant"),
    (lambda c: c["methods"]["SimFormer-RT"].update(pseudo_labels="SimFormer-RT"),
     "methods.SimFormer-RT.pseudo_labels: SimFormer-RT cannot train on its own pseudo labels"),
    (lambda c: c["methods"]["SimFormer-sim"].update(pseudo_labels="SimFormer-RT",
                                                    params={"crosim": True, "retrain": True}),
     "methods.SimFormer-sim.pseudo_labels: the pseudo labels go round in a cycle (SimFormer-sim "
     "-> SimFormer-RT -> SimFormer-sim); let one of them train on the dataset's own labels"),
    (lambda c: c["methods"].update(MIB={"pseudo_labels": "SimFormer-sim"}),
     "methods.MIB.pseudo_labels: MIB is not a weak-shot method, and only weak-shot runs "
     "(SimFormer) train on pseudo labels; remove it"),
    # retraining <-> pseudo labels
    (lambda c: c["methods"]["SimFormer-RT"].pop("pseudo_labels"),
     "methods.SimFormer-RT.pseudo_labels: SimFormer-RT retrains (params.retrain true) but names "
     "no pseudo labels; set it to the weak-shot variant whose step-1 model labels the train set"),
    (lambda c: c["methods"]["SimFormer-RT"]["params"].pop("retrain"),
     "methods.SimFormer-RT.params.retrain: SimFormer-RT trains on SimFormer-sim's pseudo labels, "
     "so set retrain: true"),
    (lambda c: c["overrides"].update(r={"when": {"method": "SimFormer-base"},
                                        "set": {"params": {"retrain": True}}}),
     "methods.SimFormer-base.pseudo_labels: SimFormer-base retrains"),
    # stages, keys and names
    (lambda c: c["methods"]["SimFormer"].update(continual={"train": {"lr": 0.1}}),
     "methods.SimFormer.continual: SimFormer is a weak-shot method (step 1 from ImageNet "
     "weights, under protocol weakshot only); move these settings to methods.SimFormer.weakshot"),
    (lambda c: c["methods"].update(MIB={"weakshot": {"train": {"lr": 0.1}}}),
     "methods.MIB.weakshot: MIB is not a weak-shot method (those are: SimFormer); remove the "
     "section"),
    (lambda c: c["datasets"]["synthetic"]["weakshot"].update(data={"train_labels": "x"}),
     "datasets.synthetic.weakshot.data.train_labels is set by the workflow for each run"),
    (lambda c: c["methods"].update(weakshot={}), "methods.weakshot: 'weakshot' names a folder"),
    (lambda c: c["overrides"].update(x={"when": {"stage": "weakshoot"}, "set": {}}),
     "overrides.x.when.stage: 'weakshoot' is not one of step0, fewshot, continual, weakshot"),
    # SimFormer's params, checked in every section a weak-shot run reads
    (lambda c: c["methods"]["SimFormer"]["weakshot"].update(params={"comp_wieght": 0.1}),
     "in methods.SimFormer.weakshot: unknown config key 'params.comp_wieght'; did you mean "
     "params.comp_weight"),
    (lambda c: c["datasets"]["synthetic"]["weakshot"].update(params={"distill": "kl"}),
     "in datasets.synthetic.weakshot (SimFormer's weak-shot runs): params.distill='kl' is not "
     "known; valid values: ce, cce"),
    (lambda c: c["overrides"].update(o={"when": {"protocol": "weakshot"},
                                        "set": {"params": {"loss_kd": 1.0}}}),
     "in overrides.o.set (SimFormer's weak-shot runs): unknown config key 'params.loss_kd'"),
])
def test_weakshot_config_errors(edit, message):
    with pytest.raises(IfssError) as err:
        load(_ws(edit))
    assert message in str(err.value)


def test_weakshot_params_of_other_runs_are_not_checked():
    """A weak-shot override leaves the other methods' runs alone, and theirs SimFormer's."""
    load(_ws(lambda c: c["overrides"].update(
        a={"when": {"protocol": "weakshot"}, "set": {"params": {"comp_weight": 0.2}}},
        b={"when": {"stage": "continual", "method": "PIFS"}, "set": {"params": {"loss_kd": 1.0}}},
        c={"when": {"method": "MIB"}, "set": {"params": {"loss_kd": 1.0}}})))


def test_shipped_configs_load():
    demo = load(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    assert demo.table_spec("demo_simformer")["metrics"] == ["base", "novel", "all"]
    assert demo.pseudo_source("SimFormer-RT") == "SimFormer-sim"
    matrix = load(yaml.safe_load(SIMFORMER_CONFIG.read_text()))
    ade = matrix.weakshot_sets("ade", "ws2", "SimFormer-sim", "1")
    for pair in ("model.pretrained=resources/weights/resnet50.pth", "train.iterations=160000",
                 "data.batch_size=4", "data.crop_size=512", "params.comp_weight=0.2",
                 "params.distill_weight=0.5", "params.crosim=true", "train.lr_mult.body=0.1",
                 "train.clip_grad_norm=0.01", "train.optimizer=adamw", "seed=6"):
        assert f"--set {pair} " in ade + " ", pair
    coco = matrix.weakshot_sets("cocostuff10k", "ws1", "SimFormer-base", "1")
    for pair in ("train.iterations=60000", "data.batch_size=8", "data.crop_size=640",
                 "params.comp_weight=0.0", "model.num_queries=100"):
        assert f"--set {pair} " in coco + " ", pair
    rt = matrix.weakshot_sets("ade", "ws1", "SimFormer-RT", "1")
    assert "--set params.comp_weight=0.0 " in rt  # no ADE complementary weight for retraining
    assert "--set data.train_labels=results/pseudo/ade/ws1/SimFormer-sim " in rt


# ----------------------------------------------------------------------------- tables


def _weakshot_metrics(tmp: Path, method, task="ws1", base=0.4, novel=0.2, label=None,
                      weakshot=True) -> Path:
    record = {
        "dataset": "cocostuff10k", "task": task, "method": method, "base_method": method,
        "step": 1, "num_steps": 2, "nshot": 5, "ishot": 0,
        "classes": ["background", "a", "b", "c"], "class_ids": [0, 1, 2, 3],
        "iou": [None, base, base, novel], "num_base": 3,
        "miou_base": base, "miou_novel": novel, "miou_all": (2 * base + novel) / 3, "hm": None,
        "pixel_accuracy": 0.7, "seed": 6, "wall_time_s": 1.0, "iterations": 10,
        "device": "cpu", "config": {"data": {"protocol": "weakshot"}}, "versions": {},
    }
    if weakshot:
        record["weakshot"] = {
            "miou_all": (base + novel) / 2, "fwiou": 0.5, "macc": 0.6, "pacc": 0.8,
            "miou_base": base, "miou_novel": novel, "macc_base": 0.7, "macc_novel": 0.5,
            "hm": 2 * base * novel / (base + novel),
            "iou": [None, base, base, novel], "acc": [None, 0.7, 0.7, 0.5]}
    if label:
        record["label"] = label
    folder = tmp / task / "weakshot" / (label or method) / "step1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder / "metrics.json"


def _write(files, out: Path, **spec):
    from ifss.continual_results import write_continual_tables

    return write_continual_tables(files, out / "t.csv", out / "t.md", out / "t_runs.csv",
                                  out / "t_per_class.csv", **spec)


def test_weakshot_table_says_base_and_novel(tmp_path):
    files = [_weakshot_metrics(tmp_path, "SimFormer", "ws1", 0.4, 0.2, label="SimFormer-seg"),
             _weakshot_metrics(tmp_path, "SimFormer", "ws1", 0.5, 0.3, label="SimFormer-RT"),
             _weakshot_metrics(tmp_path, "SimFormer", "ws2", 0.6, 0.1, label="SimFormer-RT")]
    out = tmp_path / "tables"
    _write(files, out, methods=["SimFormer-seg", "SimFormer-RT"], tasks=["ws1", "ws2"],
           protocols=["weakshot"], title="W", weakshot_metrics=["base", "novel", "all", "hm"])
    csv = pd.read_csv(out / "t.csv").set_index("method")
    assert list(csv.columns) == ["ws1 weakshot base", "ws1 weakshot novel", "ws1 weakshot all",
                                 "ws1 weakshot hm", "ws2 weakshot base", "ws2 weakshot novel",
                                 "ws2 weakshot all", "ws2 weakshot hm"]
    assert csv.loc["SimFormer-RT", "ws1 weakshot novel"] == 30.0
    assert csv.loc["SimFormer-RT", "ws1 weakshot all"] == 40.0  # the `weakshot` entry's
    assert csv.loc["SimFormer-RT", "ws2 weakshot hm"] == pytest.approx(17.1)
    assert pd.isna(csv.loc["SimFormer-seg", "ws2 weakshot base"])
    md = (out / "t.md").read_text()
    assert ("| Method | ws1 weakshot base | ws1 weakshot novel | ws1 weakshot all "
            "| ws1 weakshot hm |") in md
    assert "| SimFormer-seg | 40.0 | 20.0 | 30.0 | 26.7 | – | – | – | – |" in md
    assert "old" not in md and "new" not in md.replace("novel", "")
    assert "base = mIoU of the base classes; novel = mIoU of the novel classes" in md
    runs = pd.read_csv(out / "t_runs.csv")
    assert list(runs["weakshot_novel"]) == [20.0, 30.0, 10.0] and set(runs["protocol"]) == \
        {"weakshot"}
    per_class = pd.read_csv(out / "t_per_class.csv")
    assert len(per_class) == 3 * 4 and "novel" in per_class.columns and "new" not in \
        per_class.columns
    assert list(per_class["novel"][:4]) == [False, False, False, True]
    assert list(per_class["ACC"][1:4]) == [70.0, 70.0, 50.0] and pd.isna(per_class["IoU"][0])


def test_weakshot_table_other_metrics_and_missing_entry(tmp_path):
    files = [_weakshot_metrics(tmp_path, "SimFormer")]
    out = tmp_path / "tables"
    _write(files, out, weakshot_metrics=["novel", "fwiou", "macc", "pacc", "macc_novel"])
    csv = pd.read_csv(out / "t.csv")
    assert list(csv.columns) == ["method", "ws1 weakshot novel", "ws1 weakshot fwiou",
                                 "ws1 weakshot macc", "ws1 weakshot pacc",
                                 "ws1 weakshot macc_novel"]
    assert list(csv.iloc[0, 1:]) == [20.0, 50.0, 60.0, 80.0, 50.0]
    assert "fwiou = frequency-weighted IoU" in (out / "t.md").read_text()
    old = [_weakshot_metrics(tmp_path / "old", "SimFormer", weakshot=False)]
    with pytest.raises(IfssError, match=r"has no weakshot.miou_base .*rerun its job"):
        _write(old, tmp_path / "x")


def test_weakshot_table_through_the_rule_spec(tmp_path):
    """The table job's spec (Matrix.table_spec) as workflow/scripts/make_table.py passes it."""
    matrix = load(_ws(lambda c: c["tables"]["ws"].update(metrics=["novel", "base"])))
    spec = matrix.table_spec("ws")
    files = [_weakshot_metrics(tmp_path, "SimFormer", "15-5", 0.3 + i / 10, 0.1,
                               label=None if m == "SimFormer" else m)
             for i, m in enumerate(spec["methods"])]
    out = tmp_path / "tables"
    summary = _write(files, out, methods=spec["methods"], tasks=spec["tasks"],
                     protocols=spec["protocols"], title=spec["title"],
                     extra_tests=spec.get("extra_tests"), weakshot_metrics=spec.get("metrics"))
    assert list(summary.index) == ABLATION
    assert list(pd.read_csv(out / "t.csv").columns) == ["method", "15-5 weakshot novel",
                                                        "15-5 weakshot base"]


# ----------------------------------------------------------------------------- Snakemake


def test_weakshot_dag_order_and_arguments(tmp_path):
    """The small config's weak-shot table: four runs, sim's pseudo labels after sim's run, RT
    after the pseudo labels; each job's command line."""
    config = write_config(tmp_path / "ws.yaml", copy.deepcopy(WS))
    rc, out = snakemake(tmp_path, "-n", "-p", "results/tables/ws.csv", "--configfile", str(config))
    assert rc == 0, out[-3000:]
    assert job_counts(out) == {"synth_synthetic": 1, "class_index": 1, "train_weakshot": 4,
                               "pseudo_labels": 1, "table": 1, "total": 8}
    jobs = {}  # first output -> (rule, inputs)
    for block in re.findall(r"rule (\w+):\n((?:    .*\n)+)", out):
        fields = dict(re.findall(r"^    (\w+): (.*)$", block[1], re.M))
        jobs[fields["output"].split(", ")[0]] = (block[0], fields.get("input", ""))
    runs = "results/runs/synthetic/15-5/weakshot"
    pseudo = "results/pseudo/synthetic/15-5/SimFormer-sim"
    assert jobs[pseudo][0] == "pseudo_labels"
    assert f"{runs}/SimFormer-sim/step1/model.pt" in jobs[pseudo][1].split(", ")
    assert jobs[f"{runs}/SimFormer-RT/step1/model.pt"][1].split(", ")[-1] == pseudo
    for name in ("SimFormer-base", "SimFormer", "SimFormer-sim"):
        assert "results/pseudo" not in jobs[f"{runs}/{name}/step1/model.pt"][1]
        assert "step0" not in jobs[f"{runs}/{name}/step1/model.pt"][1]
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines()
                if line.startswith("Shell command: ifss ")]
    labels = next(c for c in commands if c.startswith("ifss pseudo-labels"))
    assert labels.startswith(f"ifss pseudo-labels --model {runs}/SimFormer-sim/step1/model.pt "
                             f"--out {pseudo} --set data.root=data/synthetic "
                             "--set data.class_index=resources/splits/synthetic/class_index.json")
    rt = next(c for c in commands if "SimFormer-RT/step1/metrics.json)" in c)
    for pair in ("step=1", "method=SimFormer", "label=SimFormer-RT", "data.protocol=weakshot",
                 f"data.train_labels={pseudo}", "params.retrain=true", "train.lr=0.5",
                 "data.batch_size=4"):
        assert f"--set {pair} " in rt + " ", pair
    assert "--previous" not in rt and "model.pretrained" not in rt
    # a request the config does not allow: one sentence
    rc, out = snakemake(tmp_path, "-n", f"{runs}/FT/step1/metrics.json", "--configfile",
                        str(config))
    assert rc != 0 and "method 'FT' is not a weak-shot method" in out, out[-3000:]


def test_weakshot_config_error_stops_snakemake(tmp_path):
    cfg = _ws(lambda c: c["methods"]["SimFormer-RT"].update(pseudo_labels="SimFormer-RT"))
    rc, out = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", cfg)))
    assert rc != 0
    assert "Invalid config: methods.SimFormer-RT.pseudo_labels: SimFormer-RT cannot train on its " \
        "own pseudo labels" in out, out[-3000:]


def test_simformer_paper_dag(tmp_path):
    """simformer.yaml: COCO-Stuff-10K ws1-ws4 and ADE20K ws1-ws4 (seg, sim, RT), the ablation on
    COCO ws1 (+ base-only), the class ratios ws5-ws9 (sim, RT); sim's pseudo labels per task."""
    rc, out = snakemake(tmp_path, "-n", "--quiet", "all", "--configfile", str(SIMFORMER_CONFIG))
    assert rc == 0, out[-3000:]
    assert job_counts(out) == {
        "download_ade": 1, "download_cocostuff10k": 1, "weights": 1, "class_index": 2,
        "train_weakshot": 4 * 3 + 4 * 3 + 1 + 5 * 2, "pseudo_labels": 4 + 4 + 5, "table": 4,
        "all": 1, "total": 58}
    rc, out = snakemake(tmp_path, "--lint", "--configfile", str(SIMFORMER_CONFIG))
    assert rc == 0 and "Lints for" not in out, out[-3000:]
