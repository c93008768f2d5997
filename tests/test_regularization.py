"""EWC, PI and RW: importance updates and penalties by hand on a two-parameter model, the state
that travels in model.pt, and a resume mid-step that ends bit-for-bit where an unbroken run does.

The toy: θ = [a, b] (one tensor), L = ½ (a − 1)² + (b + 2)², plain SGD with lr 0.1 from [0, 0]:
    g0 = [−1, 4]        θ1 = [0.1, −0.4]
    g1 = [−0.9, 3.2]    θ2 = [0.19, −0.72]
    g2 = [−0.81, 2.56]  θ3 = [0.271, −0.976]
With SGD, −g Δθ = 0.1 g², so after two iterations ω = 0.1 [1 + 0.81, 16 + 10.24] = [0.181, 2.624].
"""
import logging

import pytest
import torch
from torch import nn

from conftest import run_tiny
from ifss.builder import model_from_checkpoint
from ifss.config import RunConfig
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.methods.params import EWCParams, PIParams, RWParams
from ifss.methods.registry import method_info, method_params
from ifss.methods.regularization import (ElasticWeightConsolidation, PathIntegral,
                                         RiemannianWalk, normalised)

CPU = Runtime(torch.device("cpu"))
THETA = [[0.0, 0.0], [0.1, -0.4], [0.19, -0.72], [0.271, -0.976]]


class Toy(nn.Module):
    def __init__(self, value=(0.0, 0.0)):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(value, dtype=torch.float64))

    def loss(self):
        a, b = self.theta
        return 0.5 * (a - 1) ** 2 + (b + 2) ** 2

    def param_groups(self):
        return {"body": [self.theta], "head": [], "classifier": []}


def make(cls, step=0, **params):
    return cls(cls.Params(**params), RunConfig(method=cls.kind.upper(), step=step), CPU)


def train_toy(method, model, iterations):
    """The engine's order of hooks around a plain SGD step (lr 0.1)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for it in range(iterations):
        method.before_step(it, iterations)
        if method._old:
            method.penalty()  # its value is logged; its gradient comes in after_backward
        optimizer.zero_grad(set_to_none=True)
        model.loss().backward()
        method.after_backward(it)
        optimizer.step()
        method.after_step(it)


def step0(cls, iterations, **params):
    method, model = make(cls, **params), Toy()
    method.prepare(model, None, None)
    train_toy(method, model, iterations)
    return method, model


def continued(cls, previous: dict, **params):
    """Step 1 of the toy from a step-0 final state, θ_old = θ2."""
    method, model = make(cls, step=1, **params), Toy(THETA[2])
    method.load_state_dict(previous)
    method.prepare(model, None, None)
    return method, model


def final(method, model):
    method.finish(model, None)
    return method.state_dict()


def close(value, expected):
    assert torch.allclose(torch.as_tensor(value, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_the_toy_trajectory_is_the_documented_one():
    method, model = step0(ElasticWeightConsolidation, 3)
    close(model.theta.detach(), THETA[3])


# --- EWC ------------------------------------------------------------------------------------------

def test_ewc_running_fisher_after_two_iterations():
    # F0 = 1;  F1 = 0.9 g0² + 0.1 F0 = [1.0, 14.5];  F2 = 0.9 g1² + 0.1 F1 = [0.829, 10.666]
    method, model = step0(ElasticWeightConsolidation, 2, alpha=0.9)
    close(method.state_dict()["fisher"]["theta"], [0.829, 10.666])
    state = final(method, model)
    assert (state["kind"], state["step"], state["final"]) == ("ewc", 0, True)
    close(state["fisher"]["theta"], [0.829, 10.666])


def test_ewc_penalty_and_its_gradient_against_the_previous_step():
    previous = final(*step0(ElasticWeightConsolidation, 2))
    # unnormalised: λ Σ F (θ − θ_old)² with F = [0.829, 10.666], d = [1, −2], λ = 2
    method, model = continued(ElasticWeightConsolidation, previous, importance=2.0,
                              normalize=False)
    with torch.no_grad():
        model.theta += torch.tensor([1.0, -2.0], dtype=torch.float64)
    close(method.penalty(), 2 * (0.829 * 1 + 10.666 * 4))  # 86.986
    # the gradient: the task's (at θ = [1.19, −2.72]: [0.19, −1.44]) + 2 λ F d
    model.loss().backward()
    method.after_backward(0)
    close(model.theta.grad, [0.19 + 4 * 0.829, -1.44 - 8 * 10.666])
    # ... and the Fisher saw the task's gradient only: 0.9 [0.19², 1.44²] + 0.1 [0.829, 10.666]
    close(method.state_dict()["fisher"]["theta"],
          [0.9 * 0.0361 + 0.0829, 0.9 * 2.0736 + 1.0666])
    # normalised (the default): W = (F − min) / (max − min + 1e-8) = [0, 1 − 1e-9]
    method, model = continued(ElasticWeightConsolidation, previous, importance=2.0)
    with torch.no_grad():
        model.theta += torch.tensor([1.0, -2.0], dtype=torch.float64)
    close(method.penalty(), 2 * 4 * 9.837 / (9.837 + 1e-8))


def test_the_penalty_is_zero_at_step_0_and_where_nothing_moved():
    method, model = step0(ElasticWeightConsolidation, 2)
    logits, labels = torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    assert set(method.loss({"label": labels}, {"logits": logits}, None)) == {"ce"}
    for cls in (ElasticWeightConsolidation, PathIntegral, RiemannianWalk):
        method, model = continued(cls, final(*step0(cls, 2)))
        assert method.penalty().item() == 0.0  # θ == θ_old
        assert set(method.loss({"label": labels}, {"logits": logits}, None)) == {"ce", "reg"}
        model.loss().backward()
        expected = model.theta.grad.clone()
        method.after_backward(0)
        assert torch.equal(model.theta.grad, expected)  # the penalty adds no gradient


# --- PI -------------------------------------------------------------------------------------------

def test_pi_path_integral_and_importance_by_hand():
    method, model = step0(PathIntegral, 2, damping=1e-3)
    running = method.state_dict()
    close(running["omega"]["theta"], [0.181, 2.624])  # −g0 Δθ0 − g1 Δθ1
    close(running["start"]["theta"], THETA[0])
    # Ω = max(ω / ((θ2 − θ0)² + ξ), 0), θ2 − θ0 = [0.19, −0.72]
    close(final(method, model)["score"]["theta"], [0.181 / 0.0371, 2.624 / 0.5194])


def test_pi_importance_is_summed_over_steps():
    previous = final(*step0(PathIntegral, 2, damping=1e-3))
    method, model = continued(PathIntegral, previous, damping=1e-3)
    train_toy(method, model, 2)  # from θ2 on the same loss, penalty included
    moved = model.theta.detach() - torch.tensor(THETA[2], dtype=torch.float64)
    new = (method.omega / (moved * moved + 1e-3)).clamp_min(0)
    close(final(method, model)["score"]["theta"], new + previous["score"]["theta"])


# --- RW -------------------------------------------------------------------------------------------

S1 = [0.181 / (0.5 * 0.829 * 0.19 ** 2 + 1e-8), 2.624 / (0.5 * 10.666 * 0.72 ** 2 + 1e-8)]
F3 = [0.9 * 0.6561 + 0.0829, 0.9 * 6.5536 + 1.0666]  # 0.9 g2² + 0.1 F2
# the last window (iteration 2 alone): ω = 0.1 g2², moved θ3 − θ2 = [0.081, −0.256]
S2 = [0.06561 / (0.5 * F3[0] * 0.081 ** 2 + 1e-8), 0.65536 / (0.5 * F3[1] * 0.256 ** 2 + 1e-8)]


def test_rw_path_score_by_hand():
    method, model = step0(RiemannianWalk, 2, reg_iterations=2, alpha=0.9)
    running = method.state_dict()
    # the window of iterations 0-1 closed: s = ω / (½ F2 (θ2 − θ0)² + 1e-8), ω reset
    close(running["path_score"]["theta"], S1)
    close(running["omega"]["theta"], [0.0, 0.0])
    close(running["window_start"]["theta"], THETA[2])
    close(running["fisher"]["theta"], [0.829, 10.666])


def test_rw_closes_the_last_partial_window_and_combines_fisher_and_score():
    method, model = step0(RiemannianWalk, 3, reg_iterations=2)
    previous = final(method, model)
    score = [S1[0] + S2[0], S1[1] + S2[1]]
    close(previous["score"]["theta"], score)
    close(previous["fisher"]["theta"], F3)
    # the next step's weights, unnormalised: W = F + s; d = [1, 1], λ = 1
    method, model = continued(RiemannianWalk, previous, importance=1.0, normalize=False)
    with torch.no_grad():
        model.theta += 1.0
    close(method.penalty(), F3[0] + F3[1] + score[0] + score[1])
    # normalised: norm(F) + norm(s) = [0, 1] + [1, 0] (F grows with b, s with a)
    method, model = continued(RiemannianWalk, previous, importance=1.0)
    with torch.no_grad():
        model.theta += 1.0
    spread_f, spread_s = F3[1] - F3[0], score[0] - score[1]
    close(method.penalty(), spread_f / (spread_f + 1e-8) + spread_s / (spread_s + 1e-8))


def test_rw_score_is_averaged_with_the_previous_step_and_fisher_carried():
    previous = final(*step0(RiemannianWalk, 3, reg_iterations=2))
    method, model = continued(RiemannianWalk, previous)
    state = final(method, model)  # a step without iterations: its own score is 0
    close(state["score"]["theta"], 0.5 * previous["score"]["theta"])
    close(state["fisher"]["theta"], previous["fisher"]["theta"])


def test_min_max_normalisation_by_hand():
    close(normalised(torch.tensor([2.0, 4.0, 10.0])), [0.0, 2 / (8 + 1e-8), 8 / (8 + 1e-8)])


# --- refusals and presets ----------------------------------------------------------------------

def test_wrong_states_and_settings_are_one_sentence(caplog):
    ewc_state = final(*step0(ElasticWeightConsolidation, 1))
    with pytest.raises(IfssError, match="holds 'ewc' importance, not 'pi'"):
        make(PathIntegral, step=1).load_state_dict(ewc_state)
    with pytest.raises(IfssError, match="step 2 was given the final ewc state of step 0"):
        make(ElasticWeightConsolidation, step=2).load_state_dict(ewc_state)
    with pytest.raises(IfssError, match="needs the importance that its step-0 run saved"):
        make(ElasticWeightConsolidation, step=1).prepare(Toy(), None, None)
    with pytest.raises(IfssError, match="train.amp=bf16 or none"):
        RiemannianWalk(RWParams(), RunConfig(method="RW"),
                       Runtime(torch.device("cuda"), amp="fp16"))
    # λ 1000, max W 1, lr 0.01: lr 2λW = 20, past SGD's limit 2 (1 + 0.9) with momentum 0.9
    with caplog.at_level(logging.WARNING, logger="ifss"):
        continued(ElasticWeightConsolidation, ewc_state, importance=1000.0)
    assert "exceeds 3.8" in caplog.text


def test_presets_are_sdrs_and_checked():
    assert (EWCParams().importance, EWCParams().alpha) == (1000.0, 0.9)
    assert (RWParams().reg_iterations, PIParams().importance) == (10, 1000.0)
    for name in ("EWC", "PI", "RW"):
        info = method_info(name)
        assert (info.base, info.step0, info.classifier) == (name, True, "linear")
    for bad in ({"alpha": 0}, {"importance": -1}, {"reg_iterations": 0}):
        with pytest.raises(IfssError, match="params."):
            method_params("RW", bad)
    with pytest.raises(IfssError, match="params.damping"):
        method_params("PI", {"damping": 0})


# --- through the engine ---------------------------------------------------------------------------

CONTINUAL = {"task": "15-5", "data.protocol": "disjoint"}
STEP1 = {**CONTINUAL, "step": 1, "train.lr": 0.001}  # lr 2 λ max W stays below SGD's limit


@pytest.fixture(scope="module")
def step0_runs(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("regularization")
    for name in ("EWC", "PI", "RW"):
        run_tiny(synth_root, out / name, method=name, **CONTINUAL)
    return out


@pytest.mark.parametrize("name,keys", [("EWC", {"fisher"}), ("PI", {"score"}),
                                       ("RW", {"fisher", "score"})])
def test_two_steps_carry_the_importance_and_log_the_penalty(name, keys, step0_runs, synth_root,
                                                            tmp_path):
    path = step0_runs / name / "model.pt"
    _, model, ckpt = model_from_checkpoint(path)
    state = ckpt["method"]
    assert (state["step"], state["final"], keys <= set(state)) == (0, True, True)
    params = dict(model.named_parameters())
    for key in keys:  # every step-0 parameter, CPU, its shape
        assert set(state[key]) == set(params)
        assert all(state[key][n].shape == p.shape and state[key][n].device.type == "cpu"
                   for n, p in params.items())
    record = run_tiny(synth_root, tmp_path / "step1", method=name, previous=str(path), **STEP1)
    assert record["step"] == 1
    log = (tmp_path / "step1" / "log.txt").read_text()
    assert f"{name}: penalty on {len(params)} of {len(params) + 2} parameter tensors" in log
    assert " reg " in log
    state1 = torch.load(tmp_path / "step1" / "model.pt", weights_only=True)["method"]
    assert (state1["step"], state1["final"]) == (1, True)
    assert {"classifier.convs.1.weight", "classifier.convs.1.bias"} < set(state1[min(keys)])


@pytest.mark.parametrize("name", ["EWC", "PI", "RW"])
def test_resume_mid_step_restores_the_accumulators(name, step0_runs, synth_root, tmp_path,
                                                   monkeypatch):
    from ifss.methods.registry import get_method_class

    cls = get_method_class(name)
    extra = {**STEP1, "method": name, "previous": str(step0_runs / name / "model.pt"),
             "train.iterations": 6, "train.checkpoint_every": 2}
    if name == "RW":
        extra["params.reg_iterations"] = 4  # a window open across the resume point
    run_tiny(synth_root, tmp_path / "whole", **extra)

    def crash(self, iteration, total):
        if iteration == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cls, "before_step", crash)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(synth_root, tmp_path / "killed", **extra)
    resume = torch.load(tmp_path / "killed" / "resume.pt", weights_only=True)
    assert (resume["iteration"], resume["method"]["final"]) == (2, False)
    monkeypatch.undo()
    run_tiny(synth_root, tmp_path / "killed", **extra)
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in cls.final_keys:
        assert all(torch.equal(a["method"][key][n], b["method"][key][n])
                   for n in a["method"][key])
