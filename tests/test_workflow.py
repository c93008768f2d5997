"""The Snakemake workflow: config validation, DAG shape and speed, clear errors, lint, and an
end-to-end synthetic run through the real `ifss` CLI with its rerun semantics.

Every Snakemake call runs in a temporary working directory (`-d`), so the tests never touch the
checkout's results/ or data/.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
PAPER_CONFIGS = [ROOT / "config" / "papers" / f"pifs_{name}.yaml" for name in ("voc", "coco")]
SDR_CONFIGS = [ROOT / "config" / "papers" / f"sdr_{name}.yaml" for name in ("voc", "ade")]
CSS_METHODS = ["FT", "LWF", "LWF-MC", "ILT", "EWC", "RW", "PI", "MIB", "CIL", "SDR"]

# Methods of the paper tables not registered yet get a stand-in entry (with the step-0 run the
# papers use), so the DAG has its full size whatever the state of ifss/methods/registry.py.
STAND_INS = [  # name, base, step0, step0_from
    ("WI", "COS", False, None), ("DWI", "DWI", True, "COS"), ("RT", "RT", True, "FT"),
    ("AMP", "FT", False, None), ("SPN", "SPN", True, None), ("LWF", "FT", False, None),
    ("ILT", "FT", False, None), ("MIB", "FT", False, None), ("PIFS", "COS", False, None),
    ("MCLOS", "MCLOS", True, None),
    # the continual suite (SDR, MiB): EWC, RW, PI and SDR train their own step 0
    ("LWF-MC", "FT", False, None), ("CIL", "FT", False, None), ("EWC", "EWC", True, None),
    ("RW", "RW", True, None), ("PI", "PI", True, None), ("SDR", "SDR", True, None),
]


def stand_in_params() -> dict[str, dict]:
    """The params the paper configs give each method: a stand-in accepts those (a dataclass of
    them), so the configs' params checks pass before the method is registered."""
    from ifss.workflow.include import expand_includes

    params: dict[str, dict] = {}
    for config in PAPER_CONFIGS + SDR_CONFIGS:
        methods = expand_includes(yaml.safe_load(config.read_text()), ROOT)["methods"]
        for name, entry in methods.items():
            entry = entry or {}
            for fragment in (entry, *(entry.get(stage) or {} for stage in ("step0", "continual"))):
                values = fragment.get("params") or {}
                params.setdefault(entry.get("method", name), {}).update(values)
    return params


WITH_STAND_INS = f"""
import dataclasses, sys
from ifss.methods import registry
for name, base, step0, step0_from in {STAND_INS!r}:
    fields = [(k, type(v), dataclasses.field(default=v))
              for k, v in {stand_in_params()!r}.get(name, {{}}).items()]
    params = dataclasses.make_dataclass("StandIn" + name.replace("-", "_"), fields)
    registry.METHODS.setdefault(name, registry.MethodInfo(
        name, "ifss.methods.stand_in", "StandIn", base, "linear", step0, step0_from, params))
from snakemake.cli import main
sys.exit(main(sys.argv[1:]))
"""


def paper_bases() -> set[str]:
    """Step-0 methods the paper tables need: each method's base and what that base starts from."""
    from ifss.methods.registry import METHODS

    info = {name: (base, step0_from) for name, base, _, step0_from in STAND_INS}
    info.update({m.name: (m.base, m.step0_from) for m in METHODS.values()})
    methods = yaml.safe_load(PAPER_CONFIGS[0].read_text())["tables"]["pifs_voc"]["methods"]
    bases = {info[m][0] for m in methods}
    return bases | {info[b][1] for b in bases if info[b][1]}


def snakemake(workdir: Path, *args: str, stand_ins: bool = False, timeout: int = 600):
    """Run snakemake on the project's Snakefile in `workdir`; returns (returncode, output)."""
    command = [sys.executable] + (["-c", WITH_STAND_INS] if stand_ins else ["-m", "snakemake"])
    command += ["-s", str(SNAKEFILE), "-d", str(workdir), *args]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                 os.environ.get("PATH", "")]))
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}; {} if nothing is to be done."""
    if "Job stats:" not in output:
        return {}
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    return counts


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def default_config() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["datasets"]["synthetic"].update(sourc="synth"),
     "unknown config key 'sourc' under datasets.synthetic (did you mean source?)"),
    (lambda c: c["tables"]["demo"].update(shots=[0]),
     "config key 'tables.demo.shots.0': 0 is less than the minimum of 1"),
    (lambda c: c["datasets"]["synthetic"]["SS"]["train"].update(lrr=0.1),
     "in datasets.synthetic.SS: unknown config key 'train.lrr'; did you mean train.lr?"),
    (lambda c: c["datasets"]["synthetic"]["SS"]["train"].update(iterations="many"),
     "config key 'train.iterations' needs an integer, got 'many'"),
    (lambda c: c["run"].update(data={"root": "elsewhere"}),
     "run.data.root is set by the workflow"),
    (lambda c: c.update(fork_server="false"),  # what `--config fork_server=false` gives
     "config key 'fork_server': 'false' is a string; write False (e.g. --config "
     "fork_server=False)"),
    (lambda c: c["tables"]["demo"].update(methods=["FT", "PFIS"]),
     "unknown method 'PFIS' (did you mean PIFS"),
    (lambda c: c["tables"]["demo"].update(tasks=["5-0", "5-9"]),
     "tables.demo.tasks: unknown task '5-9'"),
    (lambda c: c["overrides"].update(x={"when": {"setting": "XS"}, "set": {}}),
     "overrides.x.when.setting: 'XS' is not one of SS, MS"),
    (lambda c: c["methods"].update({"PIFS-x": {"method": "PFIS"}}),
     "methods.PIFS-x.method: unknown method 'PFIS' (did you mean PIFS"),
    (lambda c: c["methods"].update({"A": {"method": "PIFS"}, "B": {"method": "A"}}),
     "methods.B.method: 'A' is itself a variant (of 'PIFS'); name the registered method"),
    (lambda c: c["methods"].update({"P2": {"method": "PIFS", "step0": {"train": {"lr": 0.1}}}}),
     "methods.P2.step0: a variant shares the step-0 run of PIFS"),
    (lambda c: c["tables"]["demo"].update(methods=["FT", "PIFS-y"]),
     "tables.demo.methods: unknown method 'PIFS-y'"),
    (lambda c: c["figures"].update(f={"dataset": "synthetic", "task": "5-0", "methods": ["FT"]}),
     "figures.f.methods: a comparison needs two or more methods"),
    (lambda c: c["figures"].update(f={"dataset": "synthetic", "task": "5-0", "step": 2,
                                      "methods": ["FT", "WI"]}),
     "figures.f.step: task '5-0' has few-shot steps 1..1"),
    # method params, checked against the method's Params when Snakemake loads the config
    (lambda c: c["methods"]["MCLOS"]["params"].update(memroy="pixel"),
     "in methods.MCLOS: unknown config key 'params.memroy'; did you mean params.memory?"),
])
def test_invalid_config_is_named(tmp_path, edit, message):
    cfg = default_config()
    edit(cfg)
    rc, out = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", cfg)))
    assert rc != 0
    assert message in out, out[-2000:]
    assert "Invalid config" in out


def test_schema_fills_defaults(tmp_path):
    """A minimal config works: defaults come from the schema (class index on, models temp)."""
    cfg = {"datasets": {"synthetic": {"source": "synth"}},
           "tables": {"t": {"dataset": "synthetic", "tasks": ["5-1"], "methods": ["FT"],
                            "shots": [1], "ishots": [0]}}}
    config = write_config(tmp_path / "c.yaml", cfg)
    rc, out = snakemake(tmp_path, "-n", "-p", "--configfile", str(config))
    assert rc == 0, out[-2000:]
    assert job_counts(out) == {"synth_synthetic": 1, "class_index": 1, "train_step0": 1,
                               "train_step": 1, "table": 1, "all": 1, "total": 6}
    assert "ifss synth --out data/synthetic --seed 0 --train 200 --val 40 --size 64" in out
    assert "--set data.class_index=resources/splits/synthetic/class_index.json" in out


# ----------------------------------------------------------------------------- the DAG


def test_default_config_builds_every_table_kind(tmp_path):
    """The demo: the whole registered few-shot family in one table (SS + MS, 2 shots), the MCLOS
    ablation tables of variants over 3 splits, the figures, the continual suite (15-5 disjoint
    and overlap) with the per-step figure of 15-1, WILSON beside FT and MiB, and SimFormer's
    weak-shot ablation (four runs, one pseudo-label job); each run planned once."""
    from ifss.methods.registry import METHODS

    rc, out = snakemake(tmp_path, "-n", "--cores", "2")
    assert rc == 0, out[-2000:]
    for rule in ("train_step0", "train_continual_step0", "train_continual", "train_weakshot"):
        jobs = re.findall(rf"rule {rule}:\n(?:    .*\n)+", out)
        assert jobs and not any("threads:" in job for job in jobs), rule  # 1: two at a time
    counts = job_counts(out)
    cfg = default_config()
    fewshot = [t for t in cfg["tables"].values() if t.get("kind", "fewshot") == "fewshot"]
    runs = {(task, method, nshot, ishot, step)
            for table in fewshot for task in table["tasks"]
            for method in table["methods"] for nshot in table["shots"]
            for ishot in table["ishots"] for step in range(1, 6 if task.endswith("m") else 2)}
    assert counts["train_step"] == len(runs)
    kinds = [f.get("kind", "comparison") for f in cfg["figures"].values()]
    assert counts["table"] == len(cfg["tables"]) and counts["figures"] == kinds.count("comparison")
    assert counts["figure_per_step"] == kinds.count("per_step") == 1
    demo, css, weak, simformer = (cfg["tables"][t] for t in ("demo", "demo_css", "demo_wilson",
                                                             "demo_simformer"))
    gfss = [t for t in cfg["tables"].values() if t.get("kind") == "episodic"]
    backbones = {row["backbone"] for t in gfss for row in t["rows"].values()}
    # every registered method is in a demo table: the few-shot family, the CSS suite, WILSON,
    # the GFSS backbone (its contrastive variant: config/synthetic.yaml, checked below),
    # SimFormer (its variants)
    weakshot = {cfg["methods"][m]["method"] for m in simformer["methods"]}
    assert set(METHODS) - {"COS", "PSP-CTR"} <= set(demo["methods"]) | set(css["methods"]) \
        | set(weak["methods"]) | backbones | weakshot
    bigger = yaml.safe_load((ROOT / "config" / "synthetic.yaml").read_text())
    assert "PSP-CTR" in {row["backbone"] for t in bigger["tables"].values()
                         for row in t.get("rows", {}).values()}
    assert counts["evaluate_episodic"] == len({
        (task, row["backbone"], nshot, row["head"], row.get("gamma", 0))
        for t in gfss for task in t["tasks"] for nshot in t["shots"] for row in t["rows"].values()})
    assert css["methods"] == CSS_METHODS and css["kind"] == weak["kind"] == "continual"
    assert css["protocols"] == weak["protocols"] == ["disjoint", "overlap"]
    assert weak["methods"] == ["FT", "MIB", "WILSON"]
    per_step = cfg["figures"]["demo_css_15-1"]["methods"]
    registered = [m for m in CSS_METHODS if m in METHODS]
    # 15-5 (disjoint, overlap) for the suite and WILSON, steps 1-5 of 15-1 per line
    assert counts.get("train_continual", 0) == 2 * len(registered) + 2 + 5 * len(per_step)
    bases = {METHODS[m].base for m in registered + ["WILSON"]}
    assert counts.get("train_continual_step0", 0) == 2 * len(bases)  # disjoint, overlap
    assert set(demo["tasks"]) == {"5-0", "5-0m"} and demo["shots"] == [1]
    assert bigger["tables"]["demo"]["shots"] == [1, 5]  # the 5-shot columns
    # SimFormer: base-only, seg, sim and the retraining on sim's pseudo labels
    assert simformer["protocols"] == ["weakshot"] and weakshot == {"SimFormer"}
    assert counts["train_weakshot"] == len(simformer["methods"]) == 4
    assert counts["pseudo_labels"] == 1
    variants = {name for name, m in cfg["methods"].items() if m and "method" in m}
    assert {cfg["methods"][v]["method"] for v in variants} <= {"MCLOS", "WILSON", "SimFormer"}
    mclos_variants = {v for v in variants if cfg["methods"][v]["method"] == "MCLOS"}
    assert len(mclos_variants) == 5
    ablations = [t for name, t in cfg["tables"].items()
                 if name != "demo" and t.get("kind", "fewshot") == "fewshot"]
    assert {m for t in ablations for m in t["methods"]} == mclos_variants | {"PIFS", "MCLOS"}
    assert all(len(t["ishots"]) >= 2 for t in ablations)
    folds = {task for t in gfss for task in t["tasks"]}
    assert counts["train_step0"] == len(backbones) * len(folds) + len(
        {METHODS[m].base for m in demo["methods"] if m in METHODS} | {"COS"})


def test_a_variant_runs_its_method_with_its_settings_from_the_shared_step0(tmp_path):
    """A variant: the registered method's code, its settings then the variant's, the method's
    step-0 run, its own run folder and row (label); overrides match either name."""
    cfg = default_config()
    cfg["methods"]["PIFS"] = {"params": {"loss_kd": 10.0}, "fewshot": {"train": {"lr": 0.002}}}
    cfg["methods"]["PIFS-kd1"] = {"method": "PIFS", "params": {"loss_kd": 1.0}}
    cfg["overrides"] = {"o": {"when": {"method": "PIFS", "stage": "fewshot"},
                              "set": {"data": {"batch_size": 3}}},
                        "v": {"when": {"method": "PIFS-kd1"}, "set": {"train": {"momentum": 0.5}}}}
    target = "results/runs/synthetic/5-0/PIFS-kd1/s1-i0/step1/metrics.json"
    rc, out = snakemake(tmp_path, target, "-n", "-p", "--configfile",
                        str(write_config(tmp_path / "c.yaml", cfg)))
    assert rc == 0, out[-3000:]
    assert job_counts(out)["train_step0"] == 1
    assert "step0/COS/metrics.json" in out and "step0/PIFS" not in out
    command = next(line for line in out.splitlines() if "PIFS-kd1/s1-i0/step1/metrics.json)" in line)
    for pair in ("method=PIFS", "label=PIFS-kd1", "params.loss_kd=1.0", "train.lr=0.002",
                 "data.batch_size=3", "train.momentum=0.5"):
        assert f"--set {pair} " in command + " ", pair
    assert "--previous results/runs/synthetic/5-0/step0/COS/model.pt" in command
    # the plain method's run is not touched by the variant-only override
    rc, out = snakemake(tmp_path, "results/runs/synthetic/5-0/PIFS/s1-i0/step1/metrics.json",
                        "-n", "-p", "--configfile", str(tmp_path / "c.yaml"))
    assert rc == 0 and "train.momentum" not in out and "label=" not in out, out[-3000:]


def test_paper_configs_dry_run_is_fast(tmp_path, record_property):
    started = time.perf_counter()
    rc, out = snakemake(tmp_path, "-n", "--quiet", "all", "--configfile", *map(str, PAPER_CONFIGS),
                        stand_ins=True)
    seconds = time.perf_counter() - started
    assert rc == 0, out[-3000:]
    counts = job_counts(out)
    record_property("paper_dry_run_seconds", round(seconds, 2))
    record_property("paper_dry_run_jobs", counts["total"])
    print(f"\ndry run of both paper configs: {counts['total']} jobs in {seconds:.1f} s")
    # 11 methods x 9 (shot, split) x (VOC: 4 SS + 4 MS x 5 steps; COCO: 4 SS + 4 MS x 4 steps)
    # + the VOC ablations: 5 MCLOS variants x 4 folds x 3 splits (SS 1-shot)
    assert counts["train_step"] == 11 * 9 * ((4 + 4 * 5) + (4 + 4 * 4)) + 5 * 4 * 3 == 4416
    # step 0 per fold and base method (FT, COS, DWI, RT, SPN, MCLOS); 5-im/20-im reuse 5-i/20-i;
    # the variants share MCLOS's
    assert counts["train_step0"] == 2 * 4 * len(paper_bases())
    assert counts["download_voc"] == counts["download_coco"] == counts["weights"] == 1
    assert counts["table"] == 4 and counts["figures"] == 2 and counts["figure_model"] == 4
    assert counts["total"] == 4416 + counts["train_step0"] + 16
    assert seconds < 30, f"dry run took {seconds:.1f} s (target: under 10 s on an idle machine)"


def test_paper_configs_validate_with_the_real_registry(tmp_path):
    """Unregistered paper methods: one warning line, left out; everything else plans."""
    for config in PAPER_CONFIGS + SDR_CONFIGS:
        rc, out = snakemake(tmp_path, "-n", "--quiet", "all", "--configfile", str(config))
        assert rc == 0, out[-3000:]
        warnings = [line for line in out.splitlines() if "not registered yet" in line]
        assert len(warnings) <= 1


def test_paper_configs_share_run_and_methods():
    """The two paper files merge: what they share is identical (`methods` in one included
    file), the rest is per dataset."""
    voc, coco = (yaml.safe_load(p.read_text()) for p in PAPER_CONFIGS)
    assert voc["run"] == coco["run"] and voc["include"] == coco["include"]
    assert "methods" not in voc and "methods" not in coco
    assert not set(voc["overrides"]) & set(coco["overrides"])
    assert not set(voc["datasets"]) & set(coco["datasets"])


def test_paper_params_match_registered_methods():
    """Every `params` key of the paper configs is a field of its (registered) method's Params."""
    import dataclasses

    from ifss.methods.registry import METHODS, get_method_class
    from ifss.workflow.include import expand_includes

    for config in PAPER_CONFIGS + SDR_CONFIGS:
        methods = expand_includes(yaml.safe_load(config.read_text()), ROOT)["methods"]
        for name, method in methods.items():
            registered = (method or {}).get("method", name)
            if registered not in METHODS or not method:
                continue
            fields = {f.name for f in dataclasses.fields(get_method_class(registered).Params)}
            for section in ("", "step0.", "fewshot.", "continual."):
                fragment = method.get(section[:-1]) or {} if section else method
                unknown = set(fragment.get("params") or {}) - fields
                assert not unknown, f"{config.name}: methods.{name}.{section}params {unknown}"


def test_one_run_plans_only_that_run_and_its_inputs(tmp_path):
    rc, out = snakemake(tmp_path, "results/runs/voc/5-0m/PIFS/s1-i0/step3/metrics.json", "-n",
                        "--quiet", "all", "--configfile", *map(str, PAPER_CONFIGS), stand_ins=True)
    assert rc == 0, out[-3000:]
    assert job_counts(out) == {"download_voc": 1, "weights": 1, "class_index": 1,
                               "train_step0": 1, "train_step": 3, "total": 7}


def test_multi_step_chain_and_inputs(tmp_path):
    target = "results/runs/coco/20-1m/DWI/s2-i1/step2/metrics.json"
    rc, out = snakemake(tmp_path, "-n", "-p", target, "--configfile", *map(str, PAPER_CONFIGS),
                        stand_ins=True)
    assert rc == 0, out[-3000:]
    # step 2 <- step 1 <- DWI step 0 of 20-1 (shared with 20-1m) <- COS step 0 <- data + weights
    assert "--previous results/runs/coco/20-1m/DWI/s2-i1/step1/model.pt" in out
    assert "--previous results/runs/coco/20-1/step0/DWI/model.pt" in out
    assert "--set previous=results/runs/coco/20-1/step0/COS/model.pt" in out
    assert "--set model.pretrained=resources/weights/resnet101_iabn.pth" in out
    cos_step0 = next(line for line in out.splitlines() if "step0/COS/metrics.json)" in line)
    for pair in ("train.epochs=20", "train.iterations=-1", "data.batch_size=24"):
        assert f"--set {pair} " in cos_step0  # COCO step 0: 20 epochs
    dwi_step = next(line for line in out.splitlines() if "step2/metrics.json) --previous" in line)
    for pair in ("train.lr=0.001", "data.batch_size=10"):
        assert f"--set {pair} " in dwi_step  # COCO-MS settings (DWI itself takes no SGD step)
    assert "--coco-source stuffthingmaps" in out


def continual_bases(methods) -> set[str]:
    """Step-0 methods the continual suite starts from (registry, else the stand-ins)."""
    from ifss.methods.registry import METHODS

    info = {name: base for name, base, _, _ in STAND_INS}
    info.update({m.name: m.base for m in METHODS.values()})
    return {info[m] for m in methods}


def test_continual_paper_dag(tmp_path):
    """sdr_voc + sdr_ade: per (task, protocol, method) one chain of continual steps; step 0 per
    step-0 task (15-1 uses 15-5's, 10-1 and 10-5-5 10-10's, 100-10 100-50's), protocol (disjoint
    or overlap: sequential uses disjoint's) and base; tables and per-step figures."""
    rc, out = snakemake(tmp_path, "-n", "--quiet", "all", "--configfile", *map(str, SDR_CONFIGS),
                        stand_ins=True)
    assert rc == 0, out[-3000:]
    counts = job_counts(out)
    # VOC: 10 methods x (19-1, 15-5, 15-1: 1 + 1 + 5 steps) x (disjoint, overlap, sequential)
    #      + 10 x (10-10, 10-1, 10-5-5: 1 + 10 + 2) x (disjoint, overlap); ADE (overlap):
    #      10 x (100-50, 100-10, 50-50: 1 + 5 + 2)
    assert counts["train_continual"] == 10 * 7 * 3 + 10 * 13 * 2 + 10 * 8 == 550
    bases = continual_bases(CSS_METHODS)
    assert counts["train_continual_step0"] == (3 * 2 + 2) * len(bases)  # VOC 3 tasks x 2, ADE 2
    assert "train_step" not in counts and "train_step0" not in counts
    assert counts["table"] == 4 and counts["figure_per_step"] == 8
    assert counts["download_voc"] == counts["download_ade"] == counts["weights"] == 1


def test_continual_chain_and_inputs(tmp_path):
    """One continual run: its chain, each step's --previous and data.protocol."""
    target = "results/runs/voc/15-1/sequential/MIB/step3/metrics.json"
    rc, out = snakemake(tmp_path, "-n", "-p", target, "--configfile", str(SDR_CONFIGS[0]),
                        stand_ins=True)
    assert rc == 0, out[-3000:]
    assert job_counts(out) == {"download_voc": 1, "weights": 1, "class_index": 1,
                               "train_continual_step0": 1, "train_continual": 3, "total": 7}
    commands = [line for line in out.splitlines() if "ifss train " in line]
    step0 = next(c for c in commands if "step0/FT/metrics.json" in c)
    assert "results/runs/voc/15-5/disjoint/step0/FT/" in step0  # 15-5's, disjoint's
    for pair in ("step=0", "method=FT", "data.protocol=disjoint", "train.epochs=30",
                 "train.lr=0.01", "train.nesterov=true", "data.batch_size=24",
                 "model.pretrained=resources/weights/resnet101_iabn.pth"):
        assert f"--set {pair} " in step0, pair
    previous = {"1": "results/runs/voc/15-5/disjoint/step0/FT/model.pt",
                "2": "results/runs/voc/15-1/sequential/MIB/step1/model.pt",
                "3": "results/runs/voc/15-1/sequential/MIB/step2/model.pt"}
    for step, model in previous.items():
        command = next(c for c in commands if f"sequential/MIB/step{step}/metrics.json)" in c)
        assert f"--previous {model} " in command
        for pair in (f"step={step}", "task=15-1", "method=MIB", "data.protocol=sequential",
                     "train.lr=0.001", "params.loss_kd=100.0"):  # MiB #22: 100 for 15-1
            assert f"--set {pair} " in command + " ", pair
        assert "nshot=" not in command


@pytest.mark.parametrize("target, message", [
    ("results/runs/synthetic/5-0/PFIS/s1-i0/step1/metrics.json",
     "unknown method 'PFIS' (did you mean PIFS"),
    ("results/runs/synthetic/5-9/FT/s1-i0/step1/metrics.json",
     "unknown task '5-9'"),
    ("results/runs/synthetic/5-0/FT/s50-i0/step1/metrics.json",
     "unknown shot s50: nshot must be 1..10"),
    ("results/runs/synthetic/5-0/FT/s1-i0/step2/metrics.json",
     "task '5-0' has few-shot steps 1..1, not step2"),
    ("results/runs/synthetic/5-0/step0/WI/metrics.json",
     "method 'WI' has no step-0 run"),
    ("results/runs/voc/5-0/FT/s1-i0/step1/metrics.json",
     "unknown dataset 'voc' under `datasets` in the config; valid datasets: synthetic"),
    ("results/tables/nosuch.csv",
     "unknown table 'nosuch' under `tables` in the config; valid tables: demo"),
    ("results/runs/synthetic/15-5/sequential/step0/FT/metrics.json",
     "sequential runs start from the disjoint step-0 run"),
    ("results/runs/synthetic/15-5/disjoint/FT/step2/metrics.json",
     "task '15-5' has continual steps 1..1, not step2"),
    ("results/runs/synthetic/15-1/overlap/FTT/step1/metrics.json",
     "unknown method 'FTT' (did you mean FT"),
    ("results/figures/demo_css_15-1/qualitative.png",
     "figure 'demo_css_15-1' is a per_step figure: it makes results/figures/demo_css_15-1/"
     "per_step.png"),
])
def test_unknown_target_names_fail_clearly(tmp_path, target, message):
    rc, out = snakemake(tmp_path, "-n", target, stand_ins=True)
    assert rc != 0
    assert message in out, out[-2000:]


def test_missing_manual_weights_say_where_they_go(tmp_path):
    rc, out = snakemake(tmp_path, "resources/weights/resnet101_iabn.pth", "--cores", "1",
                        "--configfile", str(PAPER_CONFIGS[0]))
    assert rc != 0
    assert "save it as resources/weights/resnet101_iabn_sync.pth.tar" in out, out[-3000:]
    assert not (tmp_path / "resources/weights/resnet101_iabn.pth").exists()


def test_lint_is_clean(tmp_path):
    for extra in ([], ["--configfile", *map(str, PAPER_CONFIGS)],
                  ["--configfile", *map(str, SDR_CONFIGS)]):
        rc, out = snakemake(tmp_path, "--lint", *extra)
        assert rc == 0, out[-3000:]
        assert "Congratulations, your workflow is in a good condition!" in out, out[-3000:]
        assert "Lints for" not in out


# ----------------------------------------------------------------------------- end to end

E2E_CONFIG = {
    "run": {"seed": 1, "train": {"device": "cpu", "checkpoint_every": 0, "log_every": 5}},
    "datasets": {"synthetic": {
        "source": "synth", "root": "data/synthetic",
        "synth": {"seed": 0, "train": 160, "val": 20, "size": 48},
        "run": {"model": {"backbone": "resnet_tiny", "head_channels": 16},
                "data": {"crop_size": 48, "fewshot_stride": 3}, "eval": {"batch_size": 20}},
        "step0": {"train": {"iterations": 15, "lr": 0.01}, "data": {"batch_size": 8}},
        "SS": {"train": {"iterations": 2, "lr": 0.001}, "data": {"batch_size": 2}},
        "MS": {"train": {"iterations": 1, "lr": 0.001}, "data": {"batch_size": 2}},
        "continual_step0": {"train": {"iterations": 15, "lr": 0.01}, "data": {"batch_size": 8}},
        "continual": {"train": {"iterations": 2, "lr": 0.001}, "data": {"batch_size": 4}},
        "weakshot": {"train": {"iterations": 2, "lr": 0.001}, "data": {"batch_size": 4}},
    }},
    "methods": {"FT": {}, "COS": {},
                "FT-hi": {"method": "FT", "fewshot": {"train": {"lr": 0.01}}},  # a variant
                # SimFormer's chain: similarity stage -> its pseudo labels -> retraining
                "SimFormer": {"weakshot": {
                    "model": {"arch": "maskformer", "head_channels": 32, "num_queries": 8,
                              "decoder_layers": 1, "attention_heads": 4, "ffn_channels": 32},
                    "train": {"optimizer": "adamw"}}},
                "SimFormer-sim": {"method": "SimFormer", "params": {"crosim": True}},
                "SimFormer-RT": {"method": "SimFormer", "pseudo_labels": "SimFormer-sim",
                                 "params": {"retrain": True, "comp_weight": 0.0}}},
    "tables": {"e2e": {"dataset": "synthetic", "tasks": ["5-0", "5-0m"], "methods": ["FT", "COS"],
                       "shots": [1], "ishots": [0, 1]},
               "e2e_variants": {"dataset": "synthetic", "tasks": ["5-0"],
                                "methods": ["FT", "FT-hi"], "shots": [1], "ishots": [0, 1]},
               # continual: FT on 15-1 (five steps, from 15-5's disjoint step 0)
               "e2e_css": {"kind": "continual", "dataset": "synthetic", "tasks": ["15-1"],
                           "protocols": ["disjoint"], "methods": ["FT"]},
               "e2e_weakshot": {"kind": "continual", "dataset": "synthetic", "tasks": ["15-5"],
                                "protocols": ["weakshot"],
                                "methods": ["SimFormer-sim", "SimFormer-RT"],
                                "metrics": ["base", "novel", "all", "fwiou"]}},
    "figures": {"e2e": {"dataset": "synthetic", "task": "5-0", "methods": ["FT", "COS"],
                        "num_images": 2, "tsne_images": 10, "per_class": 20,
                        "tsne_iterations": 250},
                "e2e_steps": {"kind": "per_step", "dataset": "synthetic", "task": "15-1",
                              "protocol": "disjoint", "methods": ["FT"]}},
}
ONE_RUN = "results/runs/synthetic/5-0/FT/s1-i0/step1/metrics.json"


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """The reduced synthetic matrix run for real: synth -> index -> step 0 -> steps -> table."""
    workdir = tmp_path_factory.mktemp("e2e")
    config = write_config(workdir / "e2e.yaml", E2E_CONFIG)
    started = time.perf_counter()
    rc, out = snakemake(workdir, "--cores", "2", "--configfile", str(config), "--show-failed-logs",
                        timeout=1200)
    seconds = time.perf_counter() - started
    assert rc == 0, out[-5000:]
    print(f"\nend-to-end synthetic workflow: {job_counts(out)['total']} jobs in {seconds:.0f} s")
    return workdir, config, out


@pytest.mark.slow
def test_e2e_jobs_ran_in_one_fork_server_that_is_gone(e2e):
    from ifss import fork_server

    workdir, _, out = e2e
    if not fork_server.available():  # not Linux >= 5.3: every job ran in its own process
        assert not (workdir / "logs" / "fork-server.log").exists()
        return
    log = (workdir / "logs" / "fork-server.log").read_text()
    server = int(re.search(r"serving \S+ \(pid (\d+);", log)[1])
    forked = re.findall(r"pid \d+: ifss (\S+)", log)
    counts = job_counts(out)
    assert forked.count("train") == sum(counts.get(rule, 0) for rule in (
        "train_step0", "train_step", "train_continual_step0", "train_continual", "train_weakshot"))
    assert forked.count("pseudo-labels") == counts["pseudo_labels"]
    assert forked.count("eval") == counts.get("evaluate_episodic", 0)
    assert log.count(": exit 0") == len(forked)
    assert log.rstrip().endswith("stopping (SIGTERM)")
    assert not Path(f"/proc/{server}").exists()
    job_logs = " ".join(p.read_text() for p in (workdir / "logs" / "runs").rglob("*.log"))
    assert "fork server" not in job_logs  # none was refused


@pytest.mark.slow
def test_e2e_tables(e2e):
    import pandas as pd

    workdir, _, out = e2e
    assert job_counts(out)["train_step"] == 2 * 1 * 2 * (1 + 5) + 2  # + the variant's 2 runs
    tables = workdir / "results" / "tables"
    summary = pd.read_csv(tables / "e2e.csv").set_index("method")
    assert list(summary.index) == ["FT", "COS"]
    for setting in ("SS", "MS"):
        assert (summary[f"{setting} 1-shot n"] == 2).all()
        for metric in ("mIoU-B", "mIoU-N", "HM"):
            assert summary[f"{setting} 1-shot {metric} mean"].between(0, 100).all()
    runs = pd.read_csv(tables / "e2e_runs.csv")
    assert len(runs) == 8 and set(runs["step"]) == {1, 5}
    per_class = pd.read_csv(tables / "e2e_per_class.csv")
    assert len(per_class) == 8 * 21  # 5-0 step 1 and 5-0m step 5 both see all 21 classes
    assert " ± " in (tables / "e2e.md").read_text()


@pytest.mark.slow
def test_e2e_variant_row_and_figures(e2e):
    import json

    import pandas as pd
    from PIL import Image

    workdir = e2e[0]
    summary = pd.read_csv(workdir / "results/tables/e2e_variants.csv").set_index("method")
    assert list(summary.index) == ["FT", "FT-hi"] and (summary["SS 1-shot n"] == 2).all()
    run = workdir / "results/runs/synthetic/5-0/FT-hi/s1-i0/step1"
    record = json.loads((run / "metrics.json").read_text())
    assert (record["method"], record["label"], record["config"]["train"]["lr"]) == \
        ("FT", "FT-hi", 0.01)
    for name in ("qualitative", "tsne"):
        with Image.open(workdir / f"results/figures/e2e/{name}.png") as png:
            assert png.width > 200 and png.height > 100


@pytest.mark.slow
def test_e2e_models_kept_and_dropped(e2e):
    workdir = e2e[0]
    step0 = workdir / "results/runs/synthetic/5-0/step0/FT/model.pt"
    assert step0.is_file() and not step0.stat().st_mode & 0o222  # protected: read-only
    assert not (workdir / "results/runs/synthetic/5-0m/5-0m").exists()
    assert not (workdir / "results/runs/synthetic/5-0m/step0").exists()  # shares 5-0's step 0
    for run in ("5-0/FT/s1-i0/step1", "5-0m/COS/s1-i1/step3", "5-0m/COS/s1-i1/step5"):
        assert (workdir / "results/runs/synthetic" / run / "metrics.json").is_file()
        assert not (workdir / "results/runs/synthetic" / run / "model.pt").exists()  # temp()


@pytest.mark.slow
def test_e2e_continual_table_and_per_step_figure(e2e):
    import json

    import pandas as pd
    from PIL import Image

    workdir, _, out = e2e
    counts = job_counts(out)
    assert counts["train_continual_step0"] == 1 and counts["train_continual"] == 5
    assert counts["figure_per_step"] == 1
    summary = pd.read_csv(workdir / "results/tables/e2e_css.csv").set_index("method")
    assert list(summary.columns) == ["15-1 disjoint old", "15-1 disjoint new", "15-1 disjoint all"]
    assert summary.loc["FT"].between(0, 100).all()
    runs = workdir / "results/runs/synthetic"
    step0 = runs / "15-5/disjoint/step0/FT"
    assert (step0 / "model.pt").is_file() and not (step0 / "model.pt").stat().st_mode & 0o222
    assert json.loads((step0 / "metrics.json").read_text())["config"]["data"]["protocol"] == \
        "disjoint"
    for step in range(1, 6):  # every step's metrics stay; models are temp()
        record = json.loads((runs / f"15-1/disjoint/FT/step{step}/metrics.json").read_text())
        assert (record["step"], record["config"]["data"]["protocol"]) == (step, "disjoint")
        assert not (runs / f"15-1/disjoint/FT/step{step}/model.pt").exists()
    frame = pd.read_csv(workdir / "results/figures/e2e_steps/per_step.csv")
    assert list(frame["step"]) == [0, 1, 2, 3, 4, 5] and frame["all"].between(0, 100).all()
    with Image.open(workdir / "results/figures/e2e_steps/per_step.png") as png:
        assert png.width > 300 and png.height > 200


@pytest.mark.slow
def test_e2e_weakshot_chain(e2e):
    """Similarity stage -> pseudo labels (a complete folder) -> retraining on them -> table."""
    import json

    import pandas as pd

    workdir, _, out = e2e
    runs = workdir / "results" / "runs" / "synthetic" / "15-5" / "weakshot"
    pseudo = workdir / "results" / "pseudo" / "synthetic" / "15-5" / "SimFormer-sim"
    manifest = json.loads((pseudo / "manifest.json").read_text())
    assert manifest["task"] == "15-5" and len(manifest["images"]) == len(
        list(pseudo.glob("*.png")))
    retrained = json.loads((runs / "SimFormer-RT" / "step1" / "metrics.json").read_text())
    labels = retrained["config"]["data"]["train_labels"]
    assert labels == "results/pseudo/synthetic/15-5/SimFormer-sim"
    assert retrained["config"]["params"]["retrain"] is True and "weakshot" in retrained
    summary = pd.read_csv(workdir / "results" / "tables" / "e2e_weakshot.csv").set_index("method")
    assert list(summary.index) == ["SimFormer-sim", "SimFormer-RT"]
    assert any("base" in c for c in summary.columns) and any("fwiou" in c for c in summary.columns)
    assert summary.notna().all().all()


@pytest.mark.slow
def test_e2e_second_request_runs_nothing(e2e):
    workdir, config, _ = e2e
    for target in ([], [ONE_RUN]):
        rc, out = snakemake(workdir, "-n", *target, "--configfile", str(config))
        assert rc == 0 and "Nothing to be done" in out, out[-3000:]


@pytest.mark.slow
def test_e2e_editing_another_method_reruns_nothing(e2e, tmp_path):
    workdir, _, _ = e2e
    cfg = copy.deepcopy(E2E_CONFIG)
    cfg["methods"]["COS"] = {"params": {}, "fewshot": {"train": {"lr": 0.005}}}
    cfg["methods"]["WI"] = {"fewshot": {"train": {"iterations": 0}}}
    edited = str(write_config(tmp_path / "edited.yaml", cfg))
    rc, out = snakemake(workdir, "-n", ONE_RUN, "--configfile", edited)  # an FT run
    assert rc == 0 and "Nothing to be done" in out, out[-3000:]
    rc, out = snakemake(workdir, "-n", "--configfile", edited)
    assert rc == 0, out[-3000:]
    counts = job_counts(out)
    # only COS's few-shot steps (its step 0 settings did not change), then its table and the
    # figure that compares it (from the figure's copy of FT's model: FT's run is not redone)
    assert counts == {"train_step": 1 * 2 * (1 + 5), "table": 1, "figure_model": 1,
                      "figures": 1, "all": 1, "total": 16}, out[-3000:]
    planned = [line for line in out.splitlines() if line.strip().startswith("output:")]
    assert planned and not any("/FT/" in line for line in planned)
    # a step-0 setting reruns step 0 (its params must not be derived from `input`, which
    # Snakemake leaves out of its params check) and what follows it
    cfg["methods"]["COS"]["step0"] = {"train": {"lr": 0.02}}
    rc, out = snakemake(workdir, "-n", "--configfile",
                        str(write_config(tmp_path / "step0.yaml", cfg)))
    assert rc == 0, out[-3000:]
    assert job_counts(out).get("train_step0") == 1, out[-3000:]


@pytest.mark.slow
def test_e2e_report_holds_the_tables(e2e):
    workdir, config, _ = e2e
    rc, out = snakemake(workdir, "--report", "report.html", "--configfile", str(config))
    assert rc == 0, out[-3000:]
    html = (workdir / "report.html").read_text()
    for text in ("e2e.csv", "e2e_runs.csv", "e2e_per_class.csv", "convention of the PIFS tables",
                 "qualitative.png", "tsne.png", "silhouette score", "e2e_css.csv",
                 "as the MiB / SDR tables", "per_step.png"):
        assert text in html
