"""One run step through the CLI and the Python API: outputs, resume, bad input."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_overrides
from ifss.cli import main
from ifss.config import build_config
from ifss.errors import IfssError
from ifss.run import train_run


def run_cli(*argv) -> int:
    return main(list(argv))


def sets(root, **extra):
    return [a for pair in tiny_overrides(root, **extra) for a in ("--set", pair)]


@pytest.fixture(scope="module")
def step0(synth_root, tmp_path_factory):
    """A COS step-0 run shared by the step-1 tests."""
    out = tmp_path_factory.mktemp("runs") / "step0"
    assert run_cli("train", *sets(synth_root, method="COS", task="5-0"), "--out", str(out)) == 0
    return out


def test_step0_writes_run_directory(step0):
    for name in ("model.pt", "metrics.json", "config.yaml", "log.txt"):
        assert (step0 / name).is_file(), name
    assert any((step0 / "tb").iterdir())
    assert not (step0 / "resume.pt").exists()
    m = json.loads((step0 / "metrics.json").read_text())
    assert m["method"] == "COS" and m["step"] == 0 and m["num_base"] == 16
    assert len(m["iou"]) == len(m["classes"]) == 16
    assert 0 <= m["miou_base"] <= 1 and m["miou_novel"] is None and m["hm"] is None
    assert m["classes"][0] == "background" and m["classes"][1] == "cyan_hexagon_dotted"  # class 6
    assert m["config"]["train"]["iterations"] == 6 and m["versions"]["torch"] == torch.__version__
    ckpt = torch.load(step0 / "model.pt", weights_only=True)
    assert ckpt["meta"]["classes_per_step"] == [16]


@pytest.mark.parametrize("nshot", [1, 5])
def test_step1_fewshot(step0, synth_root, tmp_path, nshot):
    out = tmp_path / f"s{nshot}"
    code = run_cli("train", *sets(synth_root, method="COS", task="5-0", step=1, nshot=nshot),
                   "--previous", str(step0 / "model.pt"), "--out", str(out))
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_images"] == 5 * nshot and len(m["iou"]) == 21
    assert m["miou_novel"] is not None and m["hm"] is not None
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["meta"]["classes_per_step"] == [16, 5]
    assert run_cli("eval", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "ev")) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["iou"] == pytest.approx(m["iou"])
    old = torch.load(step0 / "model.pt", weights_only=True)["model"]
    # the old classifier was loaded (then fine-tuned): same shape, and training moved it
    assert ckpt["model"]["classifier.convs.0.weight"].shape == old["classifier.convs.0.weight"].shape


def test_eval_only_reproduces_metrics(step0, tmp_path):
    assert run_cli("eval", "--checkpoint", str(step0 / "model.pt"), "--out", str(tmp_path)) == 0
    a = json.loads((step0 / "metrics.json").read_text())
    b = json.loads((tmp_path / "metrics.json").read_text())
    assert a["iou"] == pytest.approx(b["iou"])


def test_resume_after_kill_gives_same_metrics(synth_root, tmp_path):
    """Kill a run after its first checkpoint, rerun it: same result as an uninterrupted run."""
    extra = dict(method="FT", **{"train.iterations": 40, "train.checkpoint_every": 10,
                                 "train.log_every": 10})
    whole = tmp_path / "whole"
    train_run(build_config(None, tiny_overrides(synth_root, **extra)), whole)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ifss", "train", *sets(synth_root, **extra), "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "resume.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "resume.pt").exists() and not (killed / "metrics.json").exists()
    assert run_cli("train", *sets(synth_root, **extra), "--out", str(killed)) == 0
    assert "resumed from" in (killed / "log.txt").read_text()
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["iou"] == b["iou"]
    wa = torch.load(whole / "model.pt", weights_only=True)["model"]
    wb = torch.load(killed / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_same_config_same_numbers(synth_root, tmp_path):
    cfg = build_config(None, tiny_overrides(synth_root, method="FT"))
    a = train_run(cfg, tmp_path / "a")
    b = train_run(cfg, tmp_path / "b")
    assert a["iou"] == b["iou"]


def test_fix_bn_keeps_running_statistics(step0, synth_root, tmp_path):
    """train.fix_bn: the weights train, the norm layers' running statistics stay those of the
    previous model; without it the few-shot batches move them."""
    def step1(name, **extra):
        out = tmp_path / name
        cfg = build_config(None, tiny_overrides(synth_root, method="COS", task="5-0", step=1,
                                                previous=step0 / "model.pt", **extra))
        train_run(cfg, out)
        return torch.load(out / "model.pt", weights_only=True)["model"]

    before = torch.load(step0 / "model.pt", weights_only=True)["model"]
    fixed, moving = step1("fixed", **{"train.fix_bn": "true"}), step1("moving")
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(fixed[k], before[k]) for k in stats)
    assert not all(torch.equal(moving[k], before[k]) for k in stats)
    weight = next(k for k in before if k.startswith("head.") and k.endswith("conv.weight"))
    assert not torch.equal(fixed[weight], before[weight])


@pytest.mark.parametrize("pairs, message", [
    (["task=5-7"], "unknown task '5-7'.*valid tasks"),
    (["method=FTT"], "unknown method 'FTT'.*valid methods: FT, COS"),
    (["train.lrr=1"], "unknown config key 'train.lrr'"),
    (["step=1"], "step 1 needs the model of step 0"),
    (["data.root=/nonexistent/voc", "dataset=voc"], "data root /nonexistent/voc does not exist; download"),
])
def test_bad_input_one_clear_error(pairs, message, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out)] + [a for p in pairs for a in ("--set", p)]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ifss: error: ") and len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err), err
    assert not (out / "metrics.json").exists()


def test_checkpoint_of_another_task(step0, synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("train", *sets(synth_root, method="COS", task="15-5", step=1),
                   "--previous", str(step0 / "model.pt"), "--out", str(out))
    assert code == 2
    err = capsys.readouterr().err
    assert "was trained on the classes of 5-0 step 0, not those of 15-5 step 0" in err
    assert not (out / "metrics.json").exists()


def test_wrong_class_count_message(step0, synth_root, tmp_path):
    cfg = build_config(None, tiny_overrides(synth_root, method="COS", task="19-1", step=1,
                                            previous=step0 / "model.pt"))
    with pytest.raises(IfssError, match=r"has 16 classes \[16\] per step, but step 0 of task 19-1 "
                                        r"needs 20 \[20\]"):
        train_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_step1_method_cannot_train_step0_of_another_base(synth_root, tmp_path):
    cfg = build_config(None, tiny_overrides(synth_root, method="FT", step=1,
                                            previous=tmp_path / "missing.pt"))
    with pytest.raises(IfssError, match="checkpoint .*missing.pt does not exist"):
        train_run(cfg, tmp_path / "run")


def test_a_variant_continues_only_its_own_chain(step0, synth_root, tmp_path):
    """A labelled run records its label; step 2 of another label (or the plain method) is refused
    (the workflow names variants of one method: their chains must not cross)."""
    step1 = tmp_path / "variant1"
    cfg = build_config(None, tiny_overrides(synth_root, method="COS", task="5-0m", step=1,
                                            label="COS-x", previous=step0 / "model.pt"))
    record = train_run(cfg, step1)
    assert record["label"] == "COS-x" and record["method"] == "COS"
    assert torch.load(step1 / "model.pt", weights_only=True)["meta"]["label"] == "COS-x"
    plain = build_config(None, tiny_overrides(synth_root, method="COS", task="5-0m", step=2,
                                              previous=step1 / "model.pt"))
    with pytest.raises(IfssError, match=r"step 2 of method COS continues its step-1 model, but .* was "
                                        r"trained by COS-x; give the COS step-1 model.pt"):
        train_run(plain, tmp_path / "plain2")
