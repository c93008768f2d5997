"""Issue 11, values out of their domain and empty list files: one sentence naming the key or file
and the fix, exit status 2, and nothing written. No training: every case fails before it."""
import re
import subprocess
import sys

import pytest

from ifss.cli import main
from ifss.config import (ACTIVATION_NAMES, ARCHITECTURE_NAMES, BACKBONE_NAMES, NORM_NAMES,
                         OUTPUT_STRIDES, DataConfig, EvalConfig, ModelConfig, RunConfig,
                         TrainConfig, build_config, from_dict)
from ifss.data import fewshot
from ifss.data.batches import ResumableBatches
from ifss.data.build import train_samples
from ifss.data.layout import layout_for
from ifss.errors import IfssError
from ifss.tasks import get_task


def snapshot(folder):
    """Every path under `folder` with its bytes and modification time (None if it is absent)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None,
                                         p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ifss: error: "), err
    return lines[0][len("ifss: error: "):]


def finished_run(folder):
    """A run directory as a finished run leaves it."""
    folder.mkdir(parents=True)
    for name, text in (("metrics.json", '{"miou_all": 0.5}'), ("config.yaml", "task: 5-0\n"),
                       ("log.txt", "done\n"), ("model.pt", "weights")):
        (folder / name).write_text(text)
    return snapshot(folder)


# ------------------------------------------------------------- the command line a user types

CLI_CASES = [
    (["nshot=-1"], r"^nshot=-1 must be >= 1; set the number of images per new class"),
    (["ishot=-1"], r"^ishot=-1 must be >= 0; use 0, 1, 2, \.\.\. to pick a few-shot split"),
    (["nshot=0"], r"^nshot=0 must be >= 1; set the number of images per new class"),
    (["step=1", "nshot=0"], r"^nshot=0 must be >= 1"),
    (["data.batch_size=0"], r"^data\.batch_size=0 must be >= 1; set the number of images per "
                            r"training batch"),
    (["train.lr=-1"], r"^train\.lr=-1\.0 must be > 0; set a positive learning rate"),
    (["train.iterations=-5"], r"^train\.iterations=-5 must be >= 0, or -1 to train for "
                              r"train\.epochs; set an iteration count or -1"),
    (["step=1", "nshot=21"], r"^nshot=21 exceeds data\.fewshot_stride=20; split ishot takes "
                             r"images \[ishot\*stride, ishot\*stride\+nshot\).*lower nshot or "
                             r"raise data\.fewshot_stride"),
    (["eval.batch_size=0"], r"^eval\.batch_size=0 must be >= 1"),
    (["train.epochs=-1"], r"^train\.epochs=-1 must be >= 0"),
    (["train.log_every=0"], r"^train\.log_every=0 must be >= 1"),
    (["train.checkpoint_every=-10"], r"^train\.checkpoint_every=-10 must be >= 0.*0 for none"),
    (["train.lr=.nan"], r"^train\.lr=nan must be a finite number"),
    (["data.crop_size=0"], r"^data\.crop_size=0 must be >= 1"),
    (["data.scale_min=2"], r"^data\.scale_min=2\.0 exceeds data\.scale_max=1\.5.*scale_min <= "
                           r"scale_max"),
    (["data.workers=-1"], r"^data\.workers=-1 must be >= 0; use 0"),
    (["data.fewshot_stride=0"], r"^data\.fewshot_stride=0 must be >= 1"),
    (["model.output_stride=32"], r"^model\.output_stride=32 is not supported for model\.arch="
                                 r"deeplabv3; valid values: 8, 16$"),
    (["model.dropout=1"], r"^model\.dropout=1\.0 must be in \[0, 1\); use 0 for no dropout"),
    (["model.head_channels=0"], r"^model\.head_channels=0 must be >= 1"),
    (["model.psp_bins=[1, 0]"], r"^model\.psp_bins=\[1, 0\] must be a non-empty list of positive"),
    (["model.arch=psp"], r"^unknown architecture 'psp' in model\.arch \(did you mean pspnet\?\)"),
    (["model.backbone=resnet5"], r"^model\.backbone='resnet5' is not known; valid values: "),
    (["model.norm=gn"], r"^model\.norm='gn' is not known; valid values: bn, iabn, brn"),
    (["seed=-1"], r"^seed=-1 must be in \[0, 2\*\*32\)"),
    (["step=-1"], r"^step=-1 must be >= 0"),
]


@pytest.mark.parametrize("pairs, message", CLI_CASES, ids=[" ".join(p) for p, _ in CLI_CASES])
def test_cli_refuses_out_of_domain_value_and_writes_nothing(pairs, message, tmp_path, capsys):
    data_root = tmp_path / "data" / "synthetic"  # absent: a valid run would generate it
    argv = ["train", "--set", f"data.root={data_root}"]
    for pair in pairs:
        argv += ["--set", pair]
    # into a new run directory: it is not even created
    fresh = tmp_path / "fresh"
    assert main(argv + ["--out", str(fresh)]) == 2
    assert re.search(message, one_error_line(capsys))
    assert not fresh.exists() and not data_root.exists()
    # into a finished run: nothing in it changes
    done = tmp_path / "done"
    before = finished_run(done)
    assert main(argv + ["--out", str(done)]) == 2
    assert re.search(message, one_error_line(capsys))
    assert snapshot(done) == before and not data_root.exists()


def test_config_file_values_are_checked_the_same(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("nshot: 5\ndata:\n  batch_size: 0\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    assert re.search(r"^data\.batch_size=0 must be >= 1", one_error_line(capsys))
    assert not out.exists()


@pytest.fixture
def tiny_data(tmp_path):
    from ifss.data.synthetic import generate

    return generate(tmp_path / "data" / "synthetic", seed=0, n_train=40, n_val=4, size=32)


@pytest.mark.parametrize("split", ["train", "val"])
def test_cli_empty_id_list_names_the_file_and_writes_nothing(tiny_data, tmp_path, capsys, split):
    lst = tiny_data / layout_for("synthetic", tiny_data).lists[split]
    lst.write_text("\n")
    message = (rf"^id list {re.escape(str(lst))} is empty; put one {split} image id a line in "
               rf"it, or remake the dataset \(make it with `ifss synth --out ")
    argv = ["train", "--set", f"data.root={tiny_data}", "--set", "train.device=cpu"]
    fresh = tmp_path / "fresh"
    assert main(argv + ["--out", str(fresh)]) == 2
    assert re.search(message, one_error_line(capsys))
    assert not fresh.exists()
    done = tmp_path / "done"
    before = finished_run(done)
    assert main(argv + ["--out", str(done)]) == 2
    assert re.search(message, one_error_line(capsys))
    assert snapshot(done) == before


# ------------------------------------------------------------- the checks themselves

def test_defaults_pass_and_config_stays_torch_free():
    assert build_config(None, []) == RunConfig()
    code = ("import sys, ifss.config as c; c.build_config(None, ['step=1', 'nshot=2']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("pairs", [
    ["data.batch_size=1", "data.crop_size=1", "data.workers=0", "data.fewshot_stride=1",
     "step=1", "nshot=1", "ishot=0"],
    ["data.scale_min=1.0", "data.scale_max=1.0", "data.scale_min=0.01"],
    ["train.iterations=-1", "train.epochs=0", "train.checkpoint_every=0", "train.log_every=1"],
    ["train.iterations=0"],
    ["eval.batch_size=1", "seed=0"],
    [f"seed={2**32 - 1}"],
    ["model.dropout=0", "model.output_stride=16", "model.pooling_size=0", "model.psp_bins=[1]",
     "model.head_channels=1", "model.arch=pspnet", "model.norm=iabn",
     "model.activation=leaky_relu", "model.backbone=resnet101"],
    ["model.output_stride=8", "model.dropout=0.99"],
    ["step=1", "nshot=20", "ishot=7"],  # nshot == stride
    ["step=0", "nshot=50"],  # the stride does not matter at step 0
    ["step=1", "nshot=50", "data.fewshot_lists=ids.tsv"],  # nor with PIFS's lists
])
def test_boundary_values_pass(pairs):
    build_config(None, pairs)


def test_each_section_checks_on_construction():
    """Built directly (as the bench harness and the model tests do), not only through from_dict."""
    for cls, kwargs, message in [
        (DataConfig, {"batch_size": 0}, r"data\.batch_size=0"),
        (ModelConfig, {"dropout": -0.1}, r"model\.dropout=-0\.1"),
        (TrainConfig, {"iterations": -2}, r"train\.iterations=-2"),
        (EvalConfig, {"batch_size": -1}, r"eval\.batch_size=-1"),
        (RunConfig, {"ishot": -3}, r"ishot=-3"),
        (RunConfig, {"step": 2, "nshot": 3, "data": DataConfig(fewshot_stride=2)},
         r"nshot=3 exceeds data\.fewshot_stride=2"),
    ]:
        with pytest.raises(IfssError, match=message):
            cls(**kwargs)


def test_workflow_fragment_with_small_stride_passes():
    """The workflow checks partial fragments (its demo config sets fewshot_stride 3 while nshot
    keeps its default 5 until a run sets it): the cross check waits for a few-shot step."""
    from_dict(RunConfig, {"data": {"fewshot_stride": 3}})
    with pytest.raises(IfssError, match=r"nshot=5 exceeds data\.fewshot_stride=3"):
        from_dict(RunConfig, {"step": 1, "data": {"fewshot_stride": 3}})


def test_names_match_the_model_registries():
    from ifss.models import ARCHITECTURES, BACKBONES, NORMS
    from ifss.models.norm import ACTIVATIONS
    from ifss.models.resnet import OUTPUT_STRIDES as BODY_STRIDES

    assert ARCHITECTURE_NAMES == tuple(ARCHITECTURES)
    assert BACKBONE_NAMES == tuple(BACKBONES)
    assert NORM_NAMES == tuple(NORMS)
    assert ACTIVATION_NAMES == tuple(ACTIVATIONS)
    assert OUTPUT_STRIDES == tuple(BODY_STRIDES)


# ------------------------------------------------------------- data: lists, splits, batches

def test_empty_id_list(tiny_data):
    layout = layout_for("synthetic", tiny_data)
    path = tiny_data / layout.lists["val"]
    path.write_text("  \n\n")
    with pytest.raises(IfssError, match=rf"^id list {re.escape(str(path))} is empty"):
        layout.check()


def test_sampling_refuses_split_out_of_domain():
    images = {1: [str(i) for i in range(40)]}
    for kwargs, message in [({"nshot": 0, "ishot": 0}, r"^nshot=0 must be >= 1"),
                            ({"nshot": 1, "ishot": -1}, r"^ishot=-1 must be >= 0"),
                            ({"nshot": 1, "ishot": 0, "stride": 0},
                             r"^data\.fewshot_stride=0 must be >= 1")]:
        with pytest.raises(IfssError, match=message):
            fewshot.sample_fewshot(images, (1,), **kwargs)
    with pytest.raises(IfssError, match=r"^nshot=0 must be >= 1"):
        fewshot.sample_from_lists({(1, 0): ["a"]}, (1,), 0, 0)


@pytest.mark.parametrize("text, message", [
    ("", r"needs a tab-separated header with the columns class, ishot and image_ids"),
    ("class\tishot\n1\t0\n", r"needs a tab-separated header"),
    ("dataset\tclass\tishot\timage_ids\nvoc\tone\t0\ta,b\n",
     r"data row 1 has class 'one' and ishot '0'; both must be integers"),
    ("dataset\tclass\tishot\timage_ids\ncoco\t1\t0\ta,b\n",
     r"has no row for dataset voc; add its rows or unset data\.fewshot_lists"),
])
def test_fewshot_list_file_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "ids.tsv"
    path.write_text(text)
    with pytest.raises(IfssError, match=rf"few-shot list file {re.escape(str(path))}.*{message}"):
        fewshot.load_fewshot_lists(path, "voc")


def test_no_training_images_names_the_step_not_processes():
    with pytest.raises(IfssError, match=r"^this step has no training images; check nshot"):
        ResumableBatches(0, 8, seed=0)
    with pytest.raises(IfssError, match=r"3 training images cannot be split over 4 processes; "
                                        r"start fewer processes"):
        ResumableBatches(3, 8, seed=0, world=4)


def test_step0_without_base_images_says_what_to_check():
    cfg = RunConfig(data=DataConfig(root="data/x"))
    task = get_task("synthetic", "5-0")
    with pytest.raises(IfssError, match=r"none of the 1 train images of synthetic in data/x holds "
                                        r"only base classes of task 5-0.*check data\.root"):
        train_samples(cfg, task, {"a": [task.new_classes(1)[0]]})
