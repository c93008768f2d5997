"""`ifss bench --quick` on CPU: the record's fields and types (never its speeds), the markdown
table, the CUDA-only section's null-with-reason on CPU, and the pieces it is built from."""
import json
import math

from pathlib import Path

import pytest
import torch

from ifss.bench import run_bench, sizes_for
from ifss.bench import gpu, resources, throughput
from ifss.bench.context import Context
from ifss.bench.carried import carried_state
from ifss.bench.harness import MemorySet, build_setup, synthetic_root
from ifss.bench.report import figure
from ifss.bench.timing import interleaved
from ifss.cli import main
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.methods.registry import METHODS

FIXED = ("step_overhead", "checkpoint_overhead", "eval_throughput", "loader_vs_train",
         "memory.train_step", "memory.mclos_banks", "workflow.total",
         "simformer.matching_share", "simformer.crosim_over_seg", "startup.process",
         "startup.forked", "startup.forked_vs_process",
         *throughput.PRECISION_FIGURES)
FIGURE_KEYS = {"value", "unit", "target", "met", "note", "description", "sizes", "warmup",
               "repeats", "details"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick CPU run through the CLI (its cache, the synthetic data, beside its output)."""
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    assert main(["bench", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the quick run's one thread is given back
    return out, json.loads((out / "cpu.json").read_text())


def test_quick_record_header(quick):
    out, rec = quick
    assert rec["device"] == "cpu" and rec["quick"] is True and rec["failures"] == []
    assert rec["versions"]["torch"] == torch.__version__
    assert isinstance(rec["device_name"], str) and rec["device_name"]
    assert rec["timestamp"].endswith("+00:00")
    assert rec["sizes"] == sizes_for("cpu", True).as_dict()
    assert isinstance(rec["wall_time_s"], float) and isinstance(rec["threads"], int)
    assert rec["runtime"]["autocast_active"] is False and rec["runtime"]["channels_last"] is False
    assert not list(out.glob(".cpu.json.*"))  # atomic: no temporary left behind


def test_quick_record_has_every_figure_with_sane_types(quick):
    _, rec = quick
    figures = rec["figures"]
    expected = set(FIXED) | {f"method.{m}" for m in METHODS if m != "FT"} | {"method.MCLOS"}
    assert expected <= set(figures), expected - set(figures)
    assert not [n for n in figures if n.endswith(".error")]
    for name, fig in figures.items():
        assert set(fig) == FIGURE_KEYS, name
        assert fig["value"] is None or isinstance(fig["value"], (int, float)), name
        if fig["value"] is None:
            assert isinstance(fig["note"], str) and fig["note"], f"{name}: null without a reason"
        else:
            assert math.isfinite(fig["value"]), name
        if fig["target"] is None or fig["value"] is None:
            assert fig["met"] is None, name
        else:
            assert isinstance(fig["met"], bool) and fig["target"]["op"] in ("<=", ">="), name
        assert isinstance(fig["sizes"], dict) and isinstance(fig["details"], dict), name
    # the measured figures of a quick CPU run are numbers (their size is not checked)
    for name in ("step_overhead", "eval_throughput", "loader_vs_train", "memory.train_step",
                 "method.PIFS", "method.COS", "startup.process", "startup.forked",
                 "startup.forked_vs_process"):
        assert figures[name]["value"] > 0, name
    assert figures["step_overhead"]["target"] == {"op": "<=", "value": 1.05}
    assert figures["step_overhead"]["repeats"] == sizes_for("cpu", True).repeats
    assert figures["step_overhead"]["details"]["bare_step_s"] > 0
    assert figures["step_overhead"]["details"]["cpu_time_ratio"] > 0  # the CPU cross-check
    assert figures["method.WI"]["unit"] == "s"  # no gradient step: its prepare time
    mem = figures["memory.train_step"]  # measured in a fresh process
    assert mem["unit"] == "MiB" and mem["details"]["rss_after_setup_mib"] > 0
    assert isinstance(mem["details"]["step_increase_mib"], float)
    if figures["method.MCLOS"]["value"] is not None:
        assert figures["method.MCLOS"]["target"] == {"op": "<=", "value": 1.15}
        assert figures["memory.mclos_banks"]["value"] > 0
    assert figures["workflow.total"]["value"] is None  # not run with --quick, said why
    assert "--quick" in figures["workflow.total"]["note"]
    for name, bound in (("simformer.matching_share", 0.10), ("simformer.crosim_over_seg", 1.5)):
        assert figures[name]["value"] > 0 and figures[name]["target"]["value"] == bound, name
    assert figures["simformer.matching_share"]["sizes"]["queries"] == 100
    # SDR with a bf16 teacher, timed beside the registry's methods from SDR's carried state
    bf16 = figures["method.SDR.teacher_bf16"]
    assert bf16["target"] == {"op": "<=", "value": 1.25} and bf16["value"] > 0
    assert "train.teacher_precision=bf16" in bf16["description"]
    assert rec["methods"]["SDR.teacher_bf16"]["carried_state"] is True
    # MiB with a bf16 teacher: its bound (1.30, the paper size's) is not applied at this size
    mib_bf16 = figures["method.MIB.teacher_bf16"]
    assert mib_bf16["value"] > 0 and mib_bf16["target"] is None
    assert "train.teacher_precision=bf16" in mib_bf16["description"]
    # issue 16's quick-size margins over LWF; the paper-size bounds are not applied here
    lwf = rec["methods"]["LWF"]["vs_ft"]
    for name, bound in (("PIFS", 0.15), ("MIB", 0.10)):
        fig = figures[f"method.{name}.over_lwf"]
        assert fig["target"] == {"op": "<=", "value": bound}, name
        assert fig["value"] == pytest.approx(rec["methods"][name]["vs_ft"] - lwf), name
        assert figures[f"method.{name}"]["target"] is None, name
    sdr = figures["method.SDR"]
    if lwf > 1.25 and sdr["met"] is False:  # a teacher method missing a bound below LWF's floor
        assert "LWF" in sdr["note"]
    assert bf16["note"] is None  # a bf16 teacher has another floor than LWF's float32 one


def test_cuda_section_is_null_with_reason_on_cpu(quick):
    _, rec = quick
    for name in throughput.PRECISION_FIGURES:
        fig = rec["figures"][name]
        assert fig["value"] is None and fig["met"] is None
        assert "CUDA only" in fig["note"]
    assert rec["figures"]["precision.speedup"]["target"] == {"op": ">=", "value": 2.0}


def test_markdown_table(quick):
    out, rec = quick
    text = (out / "cpu.md").read_text()
    assert text.startswith("# ifss bench: cpu (quick)")
    assert "| figure | value | unit | target | met | sizes | note |" in text
    for name in rec["figures"]:
        assert f"| {name} |" in text
    assert "## Methods (step 1; step-0-only methods at step 0)" in text
    assert "| PIFS | 1 |" in text and "| PSP-CTR | 0 |" in text


def test_method_table(quick):
    _, rec = quick
    methods = rec["methods"]
    assert methods["FT"]["trains"] is True and methods["FT"]["step_s"] > 0
    assert methods["PIFS"]["reference"] == "FT"
    # MCLOS is timed against full memory banks (its steady state), the others have none
    assert methods["MCLOS"]["memory_filled"] is True and methods["PIFS"]["memory_filled"] is False
    for name, entry in methods.items():
        assert entry["trains"] in (True, False, None), name
        if entry["trains"] is None:
            assert entry["note"], name  # skipped with a note (a method under construction)
    # the methods that carry state from their own step 0 start step 1 from it (made in memory):
    # timed like the others, no setup-failed note
    for name in CARRYING:
        entry = methods[name]
        assert entry["carried_state"] is True and entry["step0_s"] > 0, name
        assert not (entry["note"] or "").startswith("setup failed"), (name, entry["note"])
        figure = rec["figures"][f"method.{name}"]
        assert figure["value"] is not None and figure["value"] > 0, (name, figure["note"])
        assert figure["details"]["carried_state"] is True, name
        if name == "DWI":  # no gradient step: its prepare time (imprinting with the generator)
            assert entry["trains"] is False and figure["unit"] == "s", name
        else:
            assert entry["trains"] is True and entry["step_s"] > 0, name
            assert entry["reference"] == ("PIFS" if name == "MCLOS" else "FT"), name
            assert entry["vs_ft"] > 0 and figure["unit"] == "ratio", name
            if name != "MCLOS":
                assert entry["note"] is None, (name, entry["note"])
    for name in ("FT", "COS", "RT", "SPN", "PIFS", "WI", "MIB"):  # nothing carried to step 1
        assert methods[name]["carried_state"] is False, name


def test_step0_only_methods_are_timed_at_step_0(quick):
    """PSP and PSP-CTR train step 0 only: timed there, PSP against FT's step 0 (a reference
    beside FT, not a figure), PSP-CTR against PSP with the GFSS issue's 1.3 bound."""
    _, rec = quick
    methods, figures = rec["methods"], rec["figures"]
    assert methods["FT.step0"]["step"] == 0 and methods["FT.step0"]["step_s"] > 0
    assert "method.FT.step0" not in figures
    assert methods["FT"]["step"] == 1 and methods["PIFS"]["step"] == 1
    for name, reference in (("PSP", "FT.step0"), ("PSP-CTR", "PSP")):
        entry = methods[name]
        assert entry["step"] == 0 and entry["trains"] is True and entry["step_s"] > 0, name
        assert entry["reference"] == reference and entry["note"] is None, name
        assert entry["carried_state"] is False, name  # step 0 starts from nothing of its own
        assert figures[f"method.{name}"]["value"] == pytest.approx(entry["ratio"]), name
        assert "step 0" in figures[f"method.{name}"]["description"], name
    assert figures["method.PSP-CTR"]["target"] == {"op": "<=", "value": 1.3}
    assert figures["method.PSP"]["target"] is None


CARRYING = ("EWC", "RW", "PI", "SDR", "DWI", "MCLOS")  # state from their own step 0


def test_carried_state_is_what_model_pt_holds(quick, tmp_path, one_thread):
    """A method's own step 0, run in memory for an iteration, hands step 1 exactly the entries
    model.pt carries (its final state, its modules' weights, on the CPU), at step 0's shapes."""
    from ifss.tasks import get_task

    out, _ = quick
    sizes = sizes_for("cpu", True)
    runtime = Runtime(torch.device("cpu"))
    root = synthetic_root(out / ".cache", sizes)  # the quick run's data, reused
    step0_classes = len(get_task("synthetic", sizes.task).order(0))

    def made(name):
        return carried_state(name, sizes, runtime, root, tmp_path / name, iterations=1)

    ewc = made("EWC")
    assert set(ewc) == {"method", "modules"} and ewc["modules"] == {}
    state = ewc["method"]
    assert (state["kind"], state["step"], state["final"]) == ("ewc", 0, True)
    fisher = state["fisher"]
    assert fisher["classifier.convs.0.weight"].shape[0] == step0_classes
    assert "classifier.convs.1.weight" not in fisher  # step 0 has one classifier step
    assert all(t.device.type == "cpu" for t in fisher.values())
    sdr = made("SDR")["method"]
    assert sdr["prototypes"].shape[0] == step0_classes and int(sdr["counts"].sum()) > 0
    dwi = made("DWI")
    assert dwi["method"] == {} and set(dwi["modules"]) == {"generator"}
    assert dwi["modules"]["generator"]["a"].shape == (sizes.head_channels,)
    for name in ("FT", "COS", "RT", "PIFS", "MIB"):  # nothing of their own to carry
        assert made(name) is None, name


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the quick bench: small ops on a shared CPU
    yield
    torch.set_num_threads(threads)


def test_quick_mclos_is_the_demo_configuration():
    """The quick bench times MCLOS as the demo config runs it (not the papers' memory sizes)."""
    import yaml

    from ifss.bench.sizes import DEMO_MCLOS_PARAMS, sizes_for

    demo = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    params = demo["methods"]["MCLOS"]["params"]
    assert {k: params[k] for k in DEMO_MCLOS_PARAMS} == DEMO_MCLOS_PARAMS
    assert sizes_for("cpu", True).method_params["MCLOS"] == DEMO_MCLOS_PARAMS
    assert not sizes_for("cpu", False).method_params  # the paper size: the paper's memory


def test_precision_section_code_path_on_cpu(tmp_path, one_thread):
    """The CUDA section's code, forced onto the CPU: its figures come out (meaningless values,
    no peak for a CPU), and the model is left as it was."""
    sizes = sizes_for("cpu", True)
    runtime = Runtime(torch.device("cpu"))
    root = synthetic_root(tmp_path / "cache", sizes)
    ft = build_setup("FT", sizes, runtime, root, tmp_path / "FT", iterations=sizes.iterations)
    ctx = Context(device="cpu", quick=True, sizes=sizes, runtime=runtime, root=root,
                  work=tmp_path, ft=ft, log=lambda _: None)
    assert all(f["value"] is None for f in throughput.precision(ctx).values())
    benchmark = torch.backends.cudnn.benchmark
    got = throughput.precision(ctx, force=True)
    assert set(got) == set(throughput.PRECISION_FIGURES)
    assert got["precision.speedup"]["value"] > 0 and got["precision.images_per_s"]["value"] > 0
    assert got["precision.peak_fraction"]["value"] is None  # "cpu" is in no peak table
    assert got["precision.speedup"]["details"]["train_gflop_per_image"] > 0
    assert torch.backends.cudnn.benchmark == benchmark
    assert ft.model.body.conv1.weight.is_contiguous()


def test_peak_table():
    assert gpu.peak_tflops("NVIDIA H200", "bf16") == 989.4
    assert gpu.peak_tflops("NVIDIA GH200 480GB", "bf16") == 989.4
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert gpu.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.5
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert gpu.peak_tflops("NVIDIA A100 80GB PCIe", "tf32") == 156.0
    assert gpu.peak_tflops("NVIDIA A10", "bf16") == 125.0
    assert gpu.peak_tflops("NVIDIA L40S", "bf16") == 362.1
    assert gpu.peak_tflops("NVIDIA L4", "bf16") == 121.0
    for unknown in ("NVIDIA A10G", "Tesla T4", "cpu", ""):
        assert gpu.peak_tflops(unknown, "bf16") is None, unknown
    assert gpu.fraction_of_peak(1e12, 10.0, 100.0) == pytest.approx(0.1)
    assert gpu.fraction_of_peak(1e12, 10.0, None) is None


def test_train_flops_on_meta_copy():
    from ifss.config import ModelConfig
    from ifss.models import build_model

    model = build_model(ModelConfig(backbone="resnet_tiny", head_channels=16, pooling_size=4),
                        [16, 5], "linear")
    before = model.body.conv1.weight.clone()
    per_image = gpu.train_flops_per_image(model, batch=2, size=64)
    # conv1 alone: 2 * 3*16*49 MACs at 32x32 forward; backward adds about twice the forward
    assert per_image > 3 * 2 * 3 * 16 * 49 * 32 * 32
    assert model.body.conv1.weight.device.type == "cpu"
    assert torch.equal(model.body.conv1.weight, before)


def test_interleaved_warmup_and_abba_order():
    calls = []

    def make(name):
        def fn():
            calls.append(name)
            return float(len(calls))
        return fn

    got = interleaved({"a": make("a"), "b": make("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert got.values == {"a": [3.0, 6.0, 7.0], "b": [4.0, 5.0, 8.0]}
    assert got.warmup == {"a": [1.0], "b": [2.0]}
    assert all(len(v) == 3 and min(v) >= 0 for v in got.cpu_s.values())
    assert got.median("a") == 6.0


def test_figure_met_and_json_safety():
    assert figure(1.2, "ratio", target=("<=", 1.05))["met"] is False
    assert figure(0.97, "ratio", target=(">=", 0.95))["met"] is True
    assert figure(None, "ratio", target=("<=", 1.05), note="n/a")["met"] is None
    assert figure(float("nan"), "ratio")["value"] is None
    assert figure(2.0, "s")["met"] is None


def test_job_count_parsing():
    stats = "Job stats:\njob      count\n-----  -----\ntrain     20\ntotal   2185\n"
    assert resources.job_count(stats) == 2185
    assert resources.job_count("Building DAG of jobs...\nNothing to be done (all requested files "
                               "are present and up to date).") == 0
    assert resources.job_count("something else") is None


def test_memory_set_indexes_like_the_engine():
    samples = [{"image": torch.full((3, 4, 4), float(i)), "label": torch.zeros(4, 4).long()}
               for i in range(3)]
    ds = MemorySet(samples, num_classes=2)
    assert ds[(4, 123)]["image"][0, 0, 0] == 1.0 and ds[2]["image"][0, 0, 0] == 2.0
    batches = ds.batches(2, 2, Runtime(torch.device("cpu")))
    assert [b["image"].shape[0] for b in batches] == [2, 2]


def test_bad_device_is_one_clear_error(tmp_path):
    with pytest.raises(IfssError, match="not valid; use cpu or cuda"):
        run_bench("tpu", True, tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(IfssError, match="no CUDA device is available"):
            run_bench("cuda", True, tmp_path)
    assert not list(tmp_path.iterdir())


def test_episodes_section_at_quick_size(tmp_path, one_thread):
    """Section 8 on the CPU at the quick size: the speed-up figure with its target, and the
    batched heads equal to the heads trained one episode at a time."""
    from ifss.bench.episodes import PLAN, episodes

    sizes = sizes_for("cpu", True)
    ctx = Context(device="cpu", quick=True, sizes=sizes, runtime=Runtime(torch.device("cpu")),
                  root=tmp_path, work=tmp_path, ft=None, log=lambda _: None)
    fig = episodes(ctx)["episodes.batched_speedup"]
    assert set(fig) == FIGURE_KEYS
    assert fig["value"] > 0 and fig["unit"] == "ratio" and isinstance(fig["met"], bool)
    assert fig["target"] == {"op": ">=", "value": 5.0}
    assert fig["sizes"]["episodes"] == PLAN[("cpu", True)][0]
    assert fig["sizes"]["feature_channels"] == sizes.head_channels
    assert fig["sizes"]["image_size"] == sizes.crop
    details = fig["details"]
    assert details["same_heads"] is True and details["differing_query_pixels"] == 0
    assert details["max_abs_weight_difference"] <= 1e-5
    assert details["batched_episodes_per_s"] > 0 and details["one_at_a_time_episodes_per_s"] > 0


def test_reference_method_left_out_is_said(tmp_path, one_thread):
    """A method whose target compares it with another method (PSP-CTR with PSP) that this run
    does not time: compared with FT at its step instead, the target not applied, and said."""
    rec = run_bench("cpu", True, tmp_path, sections=("methods",), methods=["PSP-CTR"])
    entry, fig = rec["methods"]["PSP-CTR"], rec["figures"]["method.PSP-CTR"]
    assert "PSP" not in rec["methods"] and entry["reference"] == "FT.step0"
    assert entry["note"] == "PSP has no step time: compared with FT.step0, target not applied"
    assert fig["target"] is None and fig["met"] is None and fig["value"] > 0
