"""The method contract as the engine runs it: hook order, train modes, owned modules (optimised,
checkpointed, carried, resumed), data needs, extra phases resumed after a kill."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from conftest import run_tiny
from ifss import builder, engine
from ifss.config import RunConfig, TrainConfig
from ifss.errors import IfssError
from ifss.methods import registry
from ifss.methods.base import Method
from ifss.methods.dwi import DynamicWeightImprinting
from ifss.methods.params import NoParams
from ifss.optim import build_optimizer


class Probe(Method):
    """Fine-tuning plus a small owned module on the pooled features; records what it sees."""

    needs = frozenset({"label", "image_labels"})
    events: list = []
    crash_at: int | None = None

    def build_modules(self, model):
        self.probe = nn.Linear(model.classifier.in_channels, 1)
        return {"probe": self.probe}

    def train_mode(self, model):
        super().train_mode(model)
        model.body.eval()
        self.model = model

    def before_step(self, iteration, total):
        if iteration == self.crash_at:
            raise KeyboardInterrupt
        self.events.append(("before_step", iteration, total))
        self.weight_before = self.probe.weight.detach().clone()

    def loss(self, batch, out, old_out):
        self.events.append(("loss", not self.model.body.training, self.model.head.training,
                            tuple(batch["image_labels"].shape)))
        terms = super().loss(batch, out, old_out)
        terms["probe"] = self.probe(out["features"].mean((2, 3))).pow(2).mean()
        return terms

    def after_backward(self, iteration):
        has_grad = self.probe.weight.grad is not None
        unchanged = torch.equal(self.probe.weight, self.weight_before)
        self.events.append(("after_backward", iteration, has_grad and unchanged))

    def after_step(self, iteration):
        self.events.append(("after_step", iteration,
                            not torch.equal(self.probe.weight, self.weight_before)))


@pytest.fixture
def probe(monkeypatch):
    info = registry.MethodInfo("PROBE", "tests", "Probe", "PROBE", "linear", step0=True)
    monkeypatch.setitem(registry.METHODS, "PROBE", info)
    monkeypatch.setattr(builder, "get_method_class", lambda name: Probe)
    Probe.events, Probe.crash_at = [], None
    return Probe


def test_hooks_run_in_order_with_train_modes_and_data_needs(probe, synth_root, tmp_path):
    run_tiny(synth_root, tmp_path / "run", method="PROBE", **{"train.iterations": 3})
    kinds = [e[0] for e in probe.events]
    assert kinds == ["before_step", "loss", "after_backward", "after_step"] * 3
    assert [e[1:] for e in probe.events if e[0] == "before_step"] == [(0, 3), (1, 3), (2, 3)]
    # body kept in eval mode by train_mode, head training; 16 classes of 5-0 as image labels
    assert {e[1:] for e in probe.events if e[0] == "loss"} == {(True, True, (8, 16))}
    assert all(e[2] for e in probe.events if e[0] in ("after_backward", "after_step"))


def test_owned_module_is_optimised_saved_and_carried(probe, synth_root, tmp_path):
    run_tiny(synth_root, tmp_path / "s0", method="PROBE", **{"train.iterations": 3})
    saved = torch.load(tmp_path / "s0" / "model.pt", weights_only=True)
    assert set(saved["modules"]) == {"probe"}
    # the next step's method gets those weights before `prepare`
    run, model, ckpt = builder.model_from_checkpoint(tmp_path / "s0" / "model.pt")
    method = builder.build_method(run, engine_runtime(), model, ckpt)
    assert torch.equal(method.probe.weight, saved["modules"]["probe"]["weight"])
    # a module of another shape is one sentence, not a traceback
    wide = builder.resolve(dataclasses.replace(run.cfg, model=dataclasses.replace(
        run.cfg.model, head_channels=32)), training=False)
    with pytest.raises(IfssError, match=r"holds a 'probe' that does not fit this run "
                                        r"\(size mismatch for weight"):
        builder.build_method(wide, engine_runtime(), wide.model(), ckpt)


def test_owned_module_gets_its_own_parameter_group(probe):
    cfg = RunConfig(method="PROBE", train=TrainConfig(lr=0.1, lr_mult={"probe": 0.5}))
    run = builder.resolve(cfg, training=False)
    model = run.model()
    method = builder.build_method(run, engine_runtime(), model, None)
    optimizer = build_optimizer(method.param_groups(model, cfg.train), cfg.train)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"body": 0.1, "head": 0.1, "classifier": 0.1, "probe": 0.05}


def test_resume_restores_owned_modules(probe, synth_root, tmp_path):
    extra = {"method": "PROBE", "train.iterations": 4, "train.checkpoint_every": 2}
    run_tiny(synth_root, tmp_path / "whole", **extra)
    probe.crash_at = 3
    with pytest.raises(KeyboardInterrupt):
        run_tiny(synth_root, tmp_path / "killed", **extra)
    assert (tmp_path / "killed" / "resume.pt").is_file()
    probe.crash_at, probe.events = None, []
    run_tiny(synth_root, tmp_path / "killed", **extra)
    assert [e[1] for e in probe.events if e[0] == "before_step"] == [2, 3]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert all(torch.equal(a["modules"]["probe"][k], b["modules"]["probe"][k])
               for k in a["modules"]["probe"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_extra_phase_resumes_where_it_was_killed(synth_root, cos_step0, tmp_path, monkeypatch):
    """DWI's cool-down is an engine phase: killed in it, a rerun skips the finished main phase,
    restores the phase's optimiser and episode generator, and ends with the same weights."""
    extra = {"method": "DWI", "previous": cos_step0, "params.dyn_iter": 5,
             "params.shots": "[1,2]", "params.random_images": 2, "params.class_images": 1,
             "train.checkpoint_every": 2, "train.log_every": 1}
    run_tiny(synth_root, tmp_path / "whole", **extra)
    episode, calls = DynamicWeightImprinting._episode, []

    def crash_in_iteration_4(self, *args):
        calls.append(1)
        if len(calls) > 3 * 2:  # two episodes per iteration
            raise KeyboardInterrupt
        return episode(self, *args)

    monkeypatch.setattr(DynamicWeightImprinting, "_episode", crash_in_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(synth_root, tmp_path / "killed", **extra)
    resume = torch.load(tmp_path / "killed" / "resume.pt", weights_only=True)
    assert (resume["phase"], resume["iteration"]) == ("cool-down", 2)
    monkeypatch.setattr(DynamicWeightImprinting, "_episode", episode)
    run_tiny(synth_root, tmp_path / "killed", **extra)
    log = (tmp_path / "killed" / "log.txt").read_text()
    assert "at iteration 2 of phase 'cool-down'" in log
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert torch.equal(a["modules"]["generator"]["a"], b["modules"]["generator"]["a"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_unknown_data_need_is_refused(monkeypatch):
    class Episodic(Method):
        needs = frozenset({"label", "episodes"})

    with pytest.raises(IfssError, match=r"asks for data \['episodes'\] that no step provides"):
        Episodic(NoParams(), RunConfig(method="X"), engine_runtime())


def test_resume_of_an_unknown_phase_is_refused(tmp_path):
    torch.save({"phase": "polish", "iteration": 3}, tmp_path / engine.RESUME_FILE)
    with pytest.raises(IfssError, match="phase 'polish', which this run does not have"):
        engine._load_resume(tmp_path / engine.RESUME_FILE, engine_runtime(), [engine.MAIN])


def engine_runtime():
    from ifss.distributed import Runtime

    return Runtime(torch.device("cpu"))


def test_optimiser_schedule_and_clipping_from_config(synth_root, tmp_path):
    """AdamW + linear warm-up then poly + clipping through a real run: the logged lr of each
    iteration is base lr x lr_factor of the iteration taken next."""
    from ifss.optim import lr_factor

    run_tiny(synth_root, tmp_path / "run", method="FT", **{
        "train.optimizer": "adamw", "train.lr": 1e-3, "train.schedule": "warmup_poly",
        "train.warmup_iterations": 3, "train.warmup_factor": 0.1, "train.clip_grad_norm": 0.5,
        "train.iterations": 6, "train.log_every": 1})
    logged = [float(line.rsplit("lr ", 1)[1]) for line in
              (tmp_path / "run" / "log.txt").read_text().splitlines() if " iter " in line]
    want = [1e-3 * lr_factor("warmup_poly", it, 6, 0.9, 3, 0.1) for it in range(1, 7)]
    assert logged == pytest.approx(want, rel=1e-2, abs=1e-9)


def test_pspnet_trains_and_evaluates_by_name(synth_root, tmp_path):
    m = run_tiny(synth_root, tmp_path / "psp", method="FT", **{"model.arch": "pspnet",
                                                              "train.iterations": 2})
    assert m["config"]["model"]["arch"] == "pspnet" and m["miou_base"] is not None
    state = torch.load(tmp_path / "psp" / "model.pt", weights_only=True)["model"]
    assert any(k.startswith("head.bottleneck.") for k in state)


def test_teacher_forward_in_bf16_hands_float32_outputs_close_to_float32():
    torch.manual_seed(0)
    teacher = nn.Conv2d(3, 4, 3, padding=1).eval().requires_grad_(False)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = teacher

        def forward(self, x):
            logits = self.conv(x)
            return {"logits": logits, "count": 3, "aux": [{"logits": logits}]}

    model, image = Wrap(), torch.randn(2, 3, 8, 8)
    exact = engine.teacher_forward(model, image, {}, "same")
    half = engine.teacher_forward(model, image, {}, "bf16")
    assert torch.equal(exact["logits"], teacher(image))
    assert half["logits"].dtype == torch.float32 and half["count"] == 3
    assert half["aux"][0]["logits"].dtype == torch.float32  # nested outputs too
    assert not torch.equal(half["logits"], exact["logits"])  # it did run in bf16
    torch.testing.assert_close(half["logits"], exact["logits"], rtol=0.05, atol=0.05)
    assert not half["logits"].requires_grad


def test_teacher_precision_is_checked_and_a_bf16_teacher_trains(synth_root, tmp_path,
                                                                 monkeypatch):
    seen = []
    forward = engine.teacher_forward
    monkeypatch.setattr(engine, "teacher_forward",
                        lambda *a: seen.append(a[3]) or forward(*a))
    with pytest.raises(IfssError, match=r"teacher_precision.*'fp8'.*same, bf16"):
        TrainConfig(teacher_precision="fp8")
    step0 = tmp_path / "step0"
    run_tiny(synth_root, step0, method="FT")
    record = run_tiny(synth_root, tmp_path / "step1", method="MIB", step=1, nshot=1,
                      previous=str(step0 / "model.pt"), **{"train.teacher_precision": "bf16"})
    assert record["iterations"] == 6 and 0 <= record["miou_all"] <= 1
    assert seen == ["bf16"] * 6  # every step's teacher forward
