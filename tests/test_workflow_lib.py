"""The workflow's logic (ifss/workflow/) without Snakemake: settings layering, `--set` rendering,
paths, targets, config checks (method params included) and `include` merging."""
from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ifss.config import parse_overrides
from ifss.errors import IfssError
from ifss.workflow import paths
from ifss.workflow.include import expand_includes
from ifss.workflow.matrix import Matrix
from ifss.workflow.settings import run_layers, run_settings, set_args

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAPER_CONFIGS = [ROOT / "config" / "papers" / f"pifs_{name}.yaml" for name in ("voc", "coco")]
SDR_CONFIGS = [ROOT / "config" / "papers" / f"sdr_{name}.yaml" for name in ("voc", "ade")]

SMALL = {
    "run": {"seed": 1, "train": {"lr": 0.1, "momentum": 0.1}},
    "datasets": {"synthetic": {
        "source": "synth",
        "run": {"train": {"lr": 0.2, "weight_decay": 0.2}},
        "step0": {"train": {"lr": 0.02}},
        "SS": {"train": {"lr": 0.3, "lr_head": 0.3}},
        "MS": {"train": {"lr": 0.03}},
    }},
    "methods": {
        "FT": None,
        "PIFS": {"params": {"loss_kd": 4.0, "kd_temperature": 2.0},
                 "fewshot": {"train": {"lr": 0.5, "lr_cls": 0.5}}},
        "PIFS-x": {"method": "PIFS", "params": {"loss_kd": 6.0},
                   "fewshot": {"train": {"lr": 0.7, "epochs": 7}}},
    },
    "overrides": {
        "a": {"when": {"method": "PIFS", "setting": "SS"},
              "set": {"train": {"lr": 0.8}, "data": {"batch_size": 8}}},
        "b": {"when": {"method": "PIFS-x", "nshot": [1, 2]}, "set": {"params": {"kd_clip": 9.0}}},
        "c": {"when": {"setting": "MS"}, "set": {"train": {"lr": 0.04}}},
        "d": {"when": {"method": "COS", "stage": "step0"}, "set": {"train": {"epochs": 3}}},
    },
    "tables": {"t": {"dataset": "synthetic", "tasks": ["5-0", "5-0m"],
                     "methods": ["FT", "PIFS-x"], "shots": [1, 5], "ishots": [0]}},
    "figures": {"f": {"dataset": "synthetic", "task": "5-0", "methods": ["FT", "PIFS"]}},
}


def load(cfg: dict, base_dir: Path = ROOT) -> Matrix:
    return Matrix.load(copy.deepcopy(cfg), base_dir, SCHEMA)


def edited(edit) -> dict:
    cfg = copy.deepcopy(SMALL)
    edit(cfg)
    return cfg


def test_the_library_does_not_import_torch():
    code = ("import sys, ifss.workflow.matrix, ifss.workflow.paths, ifss.cli; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ----------------------------------------------------------------------------- run settings


def test_settings_layer_in_order_later_wins():
    matrix = load(SMALL)
    run = ("synthetic", "5-0", "PIFS-x", "fewshot", "SS", 1, 0, 1)
    assert [where for where, _ in run_layers(matrix.config, *run)] == [
        "run", "datasets.synthetic.run", "datasets.synthetic.SS", "methods.PIFS",
        "methods.PIFS.fewshot", "methods.PIFS-x", "methods.PIFS-x.fewshot", "overrides.a.set",
        "overrides.b.set"]
    assert run_settings(matrix.config, *run) == {
        "seed": 1,
        "train": {"lr": 0.8, "momentum": 0.1, "weight_decay": 0.2, "lr_head": 0.3,
                  "lr_cls": 0.5, "epochs": 7},
        "params": {"loss_kd": 6.0, "kd_temperature": 2.0, "kd_clip": 9.0},
        "data": {"batch_size": 8},
    }
    # the plain method: no variant layers, and the variant-only override does not match
    plain = run_settings(matrix.config, "synthetic", "5-0m", "PIFS", "fewshot", "MS", 2, 0, 3)
    assert plain == {"seed": 1, "train": {"lr": 0.04, "momentum": 0.1, "weight_decay": 0.2,
                                          "lr_cls": 0.5},
                     "params": {"loss_kd": 4.0, "kd_temperature": 2.0}}
    # a step-0 run: datasets.D.step0, the base's sections, overrides for stage step0
    step0 = run_settings(matrix.config, "synthetic", "5-0", "COS", "step0", step=0)
    assert step0 == {"seed": 1, "train": {"lr": 0.02, "momentum": 0.1, "weight_decay": 0.2,
                                          "epochs": 3}, "params": {}}


def test_set_args_quote_and_read_back():
    fixed = {"dataset": "synthetic", "step": 1, "label": "PIFS-x"}
    fragment = {"train": {"lr": 0.001, "betas": [0.9, 0.99], "fix_bn": True},
                "params": {"memory": "pixel+region", "vectors": "", "name": "a b",
                           "yes": "yes", "number": "1.0", "colon": "x: y", "none": None}}
    args = set_args(fixed, fragment)
    assert args == (
        "--set dataset=synthetic --set step=1 --set label=PIFS-x --set train.lr=0.001 "
        "--set 'train.betas=[0.9, 0.99]' --set train.fix_bn=true "
        "--set params.memory=pixel+region --set 'params.vectors=\"\"' --set 'params.name=a b' "
        "--set 'params.yes=\"yes\"' --set 'params.number=\"1.0\"' "
        "--set 'params.colon=\"x: y\"' --set params.none=null"
    )
    words = shlex.split(args)
    assert words[::2] == ["--set"] * (len(words) // 2)
    assert parse_overrides(words[1::2]) == {**fixed, **fragment}  # what `ifss train` reads


def test_matrix_sets_of_a_variant_and_a_step0_run():
    matrix = load(SMALL)
    sets = matrix.step_sets("synthetic", "5-0", "PIFS-x", "1", "0", "1")
    assert sets.startswith("--set dataset=synthetic --set task=5-0 --set step=1 --set nshot=1 "
                           "--set ishot=0 --set method=PIFS --set label=PIFS-x "
                           "--set data.root=data/synthetic "
                           "--set data.class_index=resources/splits/synthetic/class_index.json ")
    assert "--set params.loss_kd=6.0 " in sets and sets.endswith("--set data.batch_size=8")
    assert matrix.step0_sets("synthetic", "5-0", "COS").startswith(
        "--set dataset=synthetic --set task=5-0 --set step=0 --set method=COS ")


# ----------------------------------------------------------------------------- paths, targets


def test_paths():
    assert paths.step0_dir("voc", "5-0", "COS") == "results/runs/voc/5-0/step0/COS"
    assert paths.step_dir("voc", "5-0m", "PIFS", 1, 2, 3) == \
        "results/runs/voc/5-0m/PIFS/s1-i2/step3"
    assert paths.run_dir("voc", "5-0", "COS", 0, 5, 0) == paths.step0_dir("voc", "5-0", "COS")
    assert paths.step0_dir("{dataset}", "{task}", "{base}") == \
        "results/runs/{dataset}/{task}/step0/{base}"  # the rule's output pattern
    assert paths.dataset_marker("data/voc/", "download") == "data/voc/.ifss-prepared.json"
    assert paths.dataset_marker("/data/voc", "local") == ""
    assert paths.weights_path("resources/weights/", "resnet101") == \
        "resources/weights/resnet101.pth"


def test_cli_default_run_dir_is_the_workflow_layout():
    from ifss.cli import default_run_dir
    from ifss.config import build_config

    cfg = build_config(None, ["task=5-0m", "method=PIFS", "step=2", "nshot=1", "ishot=2"])
    assert default_run_dir(cfg) == Path("results/runs/synthetic/5-0m/PIFS/s1-i2/step2")
    cfg = build_config(None, ["method=COS"])
    assert default_run_dir(cfg) == Path("results/runs/synthetic/5-0/step0/COS")


def test_targets_of_a_small_config():
    matrix = load(SMALL)
    metrics = matrix.table_metrics("t")
    assert metrics[:2] == ["results/runs/synthetic/5-0/FT/s1-i0/step1/metrics.json",
                           "results/runs/synthetic/5-0/FT/s5-i0/step1/metrics.json"]
    assert "results/runs/synthetic/5-0m/PIFS-x/s5-i0/step5/metrics.json" in metrics
    assert len(metrics) == 2 * 2 * 2
    assert matrix.all_targets() == [
        "results/tables/t.csv", "results/tables/t.md", "results/tables/t_runs.csv",
        "results/tables/t_per_class.csv", "results/figures/f/qualitative.png",
        "results/figures/f/tsne.png"]
    assert matrix.step0_task("synthetic", "5-0m") == "5-0"
    assert matrix.step_inputs("synthetic", "5-0m", "PIFS-x", "1", "0", "1") == \
        {"previous": "results/runs/synthetic/5-0/step0/COS/model.pt"}
    assert matrix.step_inputs("synthetic", "5-0m", "PIFS-x", "1", "0", "3") == \
        {"previous": "results/runs/synthetic/5-0m/PIFS-x/s1-i0/step2/model.pt"}
    assert matrix.figure_model_source("f", "PIFS") == \
        "results/runs/synthetic/5-0/PIFS/s1-i0/step1/model.pt"  # figure defaults: 1 shot, last step


@pytest.mark.parametrize("call, message", [
    (lambda m: m.check_dataset("voc"),
     "unknown dataset 'voc' under `datasets` in the config; valid datasets: synthetic"),
    (lambda m: m.step_inputs("synthetic", "5-0", "PFIS", "1", "0", "1"),
     "unknown method 'PFIS' (did you mean PIFS"),
    (lambda m: m.step_inputs("synthetic", "5-0", "FT", "1", "0", "2"),
     "task '5-0' has few-shot steps 1..1, not step2"),
    (lambda m: m.step_sets("synthetic", "5-0", "FT", "21", "0", "1"),
     "unknown shot s21: nshot must be 1..20"),
    (lambda m: m.step0_inputs("synthetic", "5-0", "PIFS"), "method 'PIFS' has no step-0 run"),
    (lambda m: m.table_metrics("nosuch"), "unknown table 'nosuch'"),
])
def test_unknown_names_in_requests(call, message):
    with pytest.raises(IfssError) as err:
        call(load(SMALL))
    assert message in str(err.value)


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["datasets"]["synthetic"].update(sourc="synth"),
     "unknown config key 'sourc' under datasets.synthetic (did you mean source?)"),
    (lambda c: c.update(tabels={}), "unknown config key 'tabels' at the top level (did you mean "
                                    "tables?)"),
    (lambda c: c["run"].update(data={"root": "x"}), "run.data.root is set by the workflow"),
    (lambda c: c["datasets"]["synthetic"]["SS"]["train"].update(lrr=0.1),
     "in datasets.synthetic.SS: unknown config key 'train.lrr'; did you mean train.lr?"),
    (lambda c: c["methods"].update({"B": {"method": "PIFS-x"}}),
     "methods.B.method: 'PIFS-x' is itself a variant (of 'PIFS'); name the registered method"),
    (lambda c: c["methods"]["PIFS-x"].update(step0={"train": {"lr": 1.0}}),
     "methods.PIFS-x.step0: a variant shares the step-0 run of PIFS"),
    (lambda c: c["overrides"].update(x={"when": {"setting": "XS"}, "set": {}}),
     "overrides.x.when.setting: 'XS' is not one of SS, MS"),
    (lambda c: c["tables"]["t"].update(methods=["FT", "PFIS"]),
     "tables.t.methods: unknown method 'PFIS' (did you mean PIFS"),
    (lambda c: c["tables"]["t"].update(methods=["FT", "PSP"]),
     "tables.t.methods: 'PSP' pre-trains a step-0 model only and has no incremental steps; use "
     "it as a backbone of an episodic table (rows: {NAME: {backbone: PSP}})"),
    (lambda c: c["figures"]["f"].update(methods=["FT", "PSP-CTR"]),
     "figures.f.methods: 'PSP-CTR' pre-trains a step-0 model only"),
])
def test_config_errors_name_the_key(edit, message):
    with pytest.raises(IfssError) as err:
        load(edited(edit))
    assert message in str(err.value)


@pytest.mark.parametrize("edit, message", [
    # a typo in a method's own params, with the fix
    (lambda c: c["methods"]["PIFS"]["params"].update(kd_temprature=1.0),
     "in methods.PIFS: unknown config key 'params.kd_temprature'; did you mean "
     "params.kd_temperature?"),
    # a variant's params checked against its method's Params, merged over the method's
    (lambda c: c["methods"].update({"M": {"method": "MCLOS", "params": {"memroy": "pixel"}}}),
     "in methods.M: unknown config key 'params.memroy'; did you mean params.memory?"),
    (lambda c: c["methods"].update({"M": {"method": "MCLOS", "params": {"memory": "pixl"}}}),
     "in methods.M: params.memory='pixl' is not known; valid values: none, pixel, pixel+region"),
    (lambda c: c["methods"]["PIFS-x"]["params"].update(loss_kd="high"),
     "in methods.PIFS-x: config key 'params.loss_kd' needs a number, got 'high'"),
    # params in a stage fragment count too
    (lambda c: c["methods"]["PIFS"]["fewshot"].update(params={"kd_clip": -1.0}),
     "in methods.PIFS.fewshot: params.loss_kd and params.kd_clip must be >= 0"),
    # an override that can apply to a method without params, or with others
    (lambda c: c["overrides"].update(o={"when": {"setting": "MS"},
                                        "set": {"params": {"loss_kd": 1.0}}}),
     "in overrides.o.set (FT's few-shot steps): FT has no params, got params.loss_kd"),
    (lambda c: c["overrides"].update(o={"when": {"method": "PIFS-x"},
                                        "set": {"params": {"los_kd": 1.0}}}),
     "in overrides.o.set (PIFS-x's few-shot steps): unknown config key 'params.los_kd'"),
    (lambda c: c["overrides"].update(o={"when": {"method": "COS", "stage": "step0"},
                                        "set": {"params": {"x": 1}}}),
     "in overrides.o.set (COS's step-0 run): COS has no params, got params.x"),
    (lambda c: c["run"].update(params={"loss_kd": 1.0}),
     "in run (FT's step-0 run): FT has no params, got params.loss_kd"),
])
def test_method_params_are_checked(edit, message):
    with pytest.raises(IfssError) as err:
        load(edited(edit))
    assert message in str(err.value)


def test_params_of_runs_that_cannot_happen_are_not_checked():
    """An override for one method, stage or setting leaves the other runs' params alone."""
    cfg = edited(lambda c: c["overrides"].update(
        o={"when": {"method": "PIFS", "stage": "fewshot"}, "set": {"params": {"kd_clip": 1.0}}},
        p={"when": {"setting": "MS", "method": "PIFS-x"}, "set": {"params": {"loss_kd": 2.0}}},
        q={"when": {"nshot": 1, "stage": "step0"}, "set": {"params": {"x": 1}}}))  # never
    load(cfg)


def test_config_files_as_shipped_load():
    load(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    for path in PAPER_CONFIGS + SDR_CONFIGS:
        matrix = load(yaml.safe_load(path.read_text()))
        assert "MCLOS-pixel" in matrix.methods  # from the included pifs_methods.yaml
    assert load(yaml.safe_load(SDR_CONFIGS[0].read_text())).methods["EWC"]["params"] == \
        {"importance": 500.0, "alpha": 0.9}  # from sdr_methods.yaml


# ----------------------------------------------------------------------------- include


def test_include_merges_under_the_config(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(
        {"include": ["b.yaml"], "run": {"seed": 1, "train": {"lr": 0.1}},
         "methods": {"FT": {}, "PIFS": {"params": {"loss_kd": 1.0}}}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(
        {"run": {"seed": 2, "train": {"lr": 0.2, "momentum": 0.5}}, "weights": {"dir": "w"}}))
    cfg = {"include": ["a.yaml"], "run": {"train": {"lr": 0.3}},
           "methods": {"PIFS": {"params": {"kd_clip": 2.0}}}}
    assert expand_includes(cfg, tmp_path) == {
        "run": {"seed": 1, "train": {"lr": 0.3, "momentum": 0.5}},  # including files win
        "weights": {"dir": "w"},
        "methods": {"FT": {}, "PIFS": {"params": {"loss_kd": 1.0, "kd_clip": 2.0}}},
        "include": ["a.yaml"],
    }
    assert expand_includes({"seed": 1}, tmp_path) == {"seed": 1}


def test_include_errors(tmp_path):
    (tmp_path / "loop.yaml").write_text("include: [loop.yaml]\n")
    with pytest.raises(IfssError, match="loop.yaml includes itself"):
        expand_includes({"include": ["loop.yaml"]}, tmp_path)
    with pytest.raises(IfssError, match="config file .*missing.yaml' does not exist"):
        expand_includes({"include": ["missing.yaml"]}, tmp_path)
    with pytest.raises(IfssError, match="include must be a list of config files"):
        expand_includes({"include": {"a": 1}}, tmp_path)


def test_paper_configs_share_the_included_methods():
    voc, coco = (yaml.safe_load(p.read_text()) for p in PAPER_CONFIGS)
    assert voc["include"] == coco["include"] == ["config/papers/pifs_methods.yaml"]
    assert "methods" not in voc and "methods" not in coco
    both = expand_includes({**voc, **coco}, ROOT)  # what `--configfile voc coco` gives
    assert both["methods"] == expand_includes(voc, ROOT)["methods"]
