"""Optimisers, learning-rate schedules and clipping against hand-computed values."""
import dataclasses
import math

import pytest
import torch

from ifss.config import TrainConfig, check_train_config
from ifss.errors import IfssError
from ifss.optim import build_optimizer, build_schedule, clip_gradients, lr_factor


def train_cfg(**kw) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), **kw)


def groups(body=1.0, head=10.0, cls=10.0) -> list[dict]:
    """Three groups of one parameter each, the shape every method's param_groups returns."""
    return [
        {"name": "body", "params": [torch.nn.Parameter(torch.ones(2))], "lr_mult": body},
        {"name": "head", "params": [torch.nn.Parameter(torch.ones(3))], "lr_mult": head},
        {"name": "classifier", "params": [torch.nn.Parameter(torch.ones(1))], "lr_mult": cls},
    ]


# --- lr_factor -----------------------------------------------------------------------------------

def test_poly_by_hand():
    assert lr_factor("poly", 0, 10, 0.9) == 1.0
    assert lr_factor("poly", 5, 10, 0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor("poly", 10, 10, 0.9) == 0.0
    assert lr_factor("poly", 12, 10, 0.9) == 0.0  # clamped past the end, never complex


def test_poly_is_bit_identical_to_the_engine_expression():
    """Existing runs must reproduce: the exact float the engine's old lambda gave."""
    for total, power in [(10, 0.9), (7, 0.9), (1000, 1.0), (333, 0.5)]:
        for it in range(total + 2):
            assert lr_factor("poly", it, total, power) == (1 - min(it, total) / total) ** power


def test_cosine_by_hand():
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 2, 8) == pytest.approx(0.5 * (1 + math.sqrt(0.5)))  # cos(pi/4)


def test_constant_poly_is_wilsons_plateau_then_unnormalised_poly():
    for it in range(4):
        assert lr_factor("constant_poly", it, 10, 0.9, warmup=4) == 1.0
    assert lr_factor("constant_poly", 4, 10, 0.9, warmup=4) == pytest.approx(0.6 ** 0.9)
    assert lr_factor("constant_poly", 7, 10, 0.9, warmup=4) == pytest.approx(0.3 ** 0.9)


def test_warmup_poly_is_detectron2s_linear_warmup_times_poly():
    f = dict(power=0.9, warmup=4, warmup_factor=0.1)
    assert lr_factor("warmup_poly", 0, 10, **f) == pytest.approx(0.1)
    assert lr_factor("warmup_poly", 2, 10, **f) == pytest.approx((0.1 * 0.5 + 0.5) * 0.8 ** 0.9)
    assert lr_factor("warmup_poly", 3, 10, **f) == pytest.approx((0.1 * 0.25 + 0.75) * 0.7 ** 0.9)
    assert lr_factor("warmup_poly", 4, 10, **f) == pytest.approx(0.6 ** 0.9)
    # no warm-up: plain poly
    assert lr_factor("warmup_poly", 3, 10, 0.9, warmup=0) == lr_factor("poly", 3, 10, 0.9)


def test_constant():
    assert [lr_factor("constant", it, 10) for it in (0, 5, 10)] == [1.0, 1.0, 1.0]


def test_unknown_schedule_names_the_valid_ones():
    with pytest.raises(IfssError, match=r"unknown schedule 'cosin'.*did you mean cosine.*poly"):
        lr_factor("cosin", 0, 10)


# --- build_schedule ------------------------------------------------------------------------------

def lrs_over(optimizer, scheduler, steps: int) -> list[list[float]]:
    """Each group's lr for `steps` optimiser steps (engine order: step, then schedule)."""
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("schedule,kw", [
    ("poly", {}),
    ("cosine", {}),
    ("constant_poly", {"warmup_iterations": 4}),
    ("warmup_poly", {"warmup_iterations": 4, "warmup_factor": 0.1}),
    ("constant", {}),
])
def test_schedule_sets_the_optimizers_lrs(schedule, kw):
    t = train_cfg(lr=0.1, schedule=schedule, **kw)
    opt = build_optimizer(groups(body=1.0, head=10.0, cls=0.5), t)
    sched = build_schedule(opt, t, total=10)
    seen = lrs_over(opt, sched, 10)
    for it, lrs in enumerate(seen):
        f = lr_factor(schedule, it, 10, 0.9, t.warmup_iterations, t.warmup_factor)
        assert lrs == pytest.approx([0.1 * f, 1.0 * f, 0.05 * f])


def test_schedule_hand_values_on_the_optimizer():
    t = train_cfg(lr=0.01, schedule="warmup_poly", warmup_iterations=4, warmup_factor=0.1)
    opt = build_optimizer(groups(head=1.0, cls=1.0), t)
    seen = lrs_over(opt, build_schedule(opt, t, total=10), 5)
    assert seen[0][0] == pytest.approx(0.001)
    assert seen[2][0] == pytest.approx(0.01 * 0.55 * 0.8 ** 0.9)
    assert seen[4][0] == pytest.approx(0.01 * 0.6 ** 0.9)


def test_schedule_rejects_a_warmup_longer_than_the_run():
    t = train_cfg(schedule="warmup_poly", warmup_iterations=20)
    opt = build_optimizer(groups(), t)
    with pytest.raises(IfssError, match="train.warmup_iterations=20 exceeds the run's 10"):
        build_schedule(opt, t, total=10)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_continues_with_the_same_lrs(optimizer):
    t = train_cfg(lr=0.1, optimizer=optimizer, schedule="warmup_poly", warmup_iterations=3,
                  warmup_factor=0.2)
    opt = build_optimizer(groups(), t)
    sched = build_schedule(opt, t, total=12)
    lrs_over(opt, sched, 5)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    uninterrupted = lrs_over(opt, sched, 7)

    opt2 = build_optimizer(groups(), t)
    sched2 = build_schedule(opt2, t, total=12)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert sched2.last_epoch == 5
    assert lrs_over(opt2, sched2, 7) == uninterrupted


# --- build_optimizer -----------------------------------------------------------------------------

def test_sgd_groups_nesterov_and_frozen_group():
    g = groups(body=0.0, head=10.0, cls=2.0)
    t = train_cfg(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = build_optimizer(g, t)
    assert type(opt) is torch.optim.SGD
    assert [pg["name"] for pg in opt.param_groups] == ["head", "classifier"]
    assert [pg["lr"] for pg in opt.param_groups] == pytest.approx([0.1, 0.02])
    assert all(pg["nesterov"] and pg["momentum"] == 0.9 and pg["weight_decay"] == 5e-4
               for pg in opt.param_groups)
    assert not g[0]["params"][0].requires_grad
    assert g[1]["params"][0].requires_grad and g[2]["params"][0].requires_grad


def test_sgd_without_momentum_drops_nesterov():
    opt = build_optimizer(groups(), train_cfg(momentum=0.0, nesterov=True))
    assert not opt.param_groups[0]["nesterov"]


def test_frozen_group_is_thawed_when_its_multiplier_is_positive():
    g = groups()
    g[0]["params"][0].requires_grad_(False)
    build_optimizer(g, train_cfg())
    assert g[0]["params"][0].requires_grad


def test_adamw_betas_weight_decay_and_lr_mult_override():
    g = groups(body=1.0, head=1.0, cls=1.0)
    t = train_cfg(optimizer="adamw", lr=1e-4, betas=[0.8, 0.99], weight_decay=1e-4,
                  lr_mult={"body": 0.1, "classifier": 0.0})
    opt = build_optimizer(g, t)
    assert type(opt) is torch.optim.AdamW
    assert [pg["name"] for pg in opt.param_groups] == ["body", "head"]
    assert [pg["lr"] for pg in opt.param_groups] == pytest.approx([1e-5, 1e-4])
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    assert not g[2]["params"][0].requires_grad


def test_lr_mult_can_thaw_a_group_the_method_froze():
    g = groups(body=0.0)
    opt = build_optimizer(g, train_cfg(lr=0.01, lr_mult={"body": 0.5}))
    assert opt.param_groups[0]["name"] == "body"
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    assert g[0]["params"][0].requires_grad


def test_no_trained_group_gives_none():
    g = groups(body=0.0, head=0.0, cls=0.0)
    assert build_optimizer(g, train_cfg()) is None
    assert not any(p.requires_grad for group in g for p in group["params"])


def test_empty_group_is_left_out():
    g = groups() + [{"name": "localizer", "params": [], "lr_mult": 1.0}]
    opt = build_optimizer(g, train_cfg())
    assert "localizer" not in [pg["name"] for pg in opt.param_groups]


def test_unknown_lr_mult_group_names_the_valid_groups():
    g = groups()
    with pytest.raises(IfssError, match=r"'bdy' in train.lr_mult.*did you mean body.*"
                                        r"body, head, classifier"):
        build_optimizer(g, train_cfg(lr_mult={"bdy": 0.1}))
    assert all(p.requires_grad for group in g for p in group["params"])  # nothing half-done


def test_unknown_optimizer():
    with pytest.raises(IfssError, match=r"unknown optimizer 'adam'.*adamw"):
        build_optimizer(groups(), train_cfg(optimizer="adam"))


# --- clip_gradients ------------------------------------------------------------------------------

def test_clip_by_hand_computed_global_norm():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    norm = clip_gradients([a, b], max_norm=1.0)
    assert norm.item() == pytest.approx(13.0)
    assert a.grad.tolist() == pytest.approx([3 / 13, 4 / 13], rel=1e-5)
    assert b.grad.tolist() == pytest.approx([12 / 13], rel=1e-5)


def test_clip_leaves_small_gradients_and_off_is_none():
    a = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([3.0, 4.0])
    assert clip_gradients([a], max_norm=10.0).item() == pytest.approx(5.0)
    assert a.grad.tolist() == [3.0, 4.0]
    assert clip_gradients([a], max_norm=0.0) is None
    assert a.grad.tolist() == [3.0, 4.0]


# --- check_train_config --------------------------------------------------------------------------

def test_defaults_and_the_papers_settings_pass():
    check_train_config(TrainConfig())
    check_train_config(train_cfg(optimizer="adamw", lr=1e-4, schedule="warmup_poly",
                                 warmup_iterations=10, warmup_factor=1.0, clip_grad_norm=0.01,
                                 lr_mult={"body": 0.1}))
    check_train_config(train_cfg(schedule="constant_poly", warmup_iterations=500, iterations=-1))
    check_train_config(train_cfg(schedule="constant_poly", warmup_iterations=5, iterations=0))


@pytest.mark.parametrize("kw,message", [
    ({"optimizer": "sgdd"}, r"unknown optimizer 'sgdd'"),
    ({"schedule": "linear"}, r"unknown schedule 'linear'"),
    ({"lr": 0.0}, r"train.lr=0.0 must be > 0"),
    ({"momentum": 1.0}, r"train.momentum=1.0 must be in \[0, 1\)"),
    ({"momentum": -0.1}, r"train.momentum=-0.1"),
    ({"betas": [0.9]}, r"train.betas=\[0.9\] must be two numbers"),
    ({"betas": [0.9, 1.0]}, r"train.betas="),
    ({"betas": [0.9, "x"]}, r"train.betas="),
    ({"weight_decay": -1e-4}, r"train.weight_decay=-0.0001 must be >= 0"),
    ({"lr_power": 0.0}, r"train.lr_power=0.0 must be > 0"),
    ({"warmup_iterations": -1}, r"train.warmup_iterations=-1 must be >= 0"),
    ({"warmup_factor": 1.5}, r"train.warmup_factor=1.5 must be in \[0, 1\]"),
    ({"clip_grad_norm": -1.0}, r"train.clip_grad_norm=-1.0 must be >= 0"),
    ({"lr_head": -1.0}, r"train.lr_head=-1.0 must be >= 0"),
    ({"lr_cls": -2.0}, r"train.lr_cls=-2.0 must be >= 0"),
    ({"lr_mult": {"body": -0.1}}, r"train.lr_mult.body=-0.1 must be a number >= 0"),
    ({"lr_mult": {"body": "fast"}}, r"train.lr_mult.body='fast'"),
    ({"schedule": "warmup_poly", "warmup_iterations": 11, "iterations": 10},
     r"train.warmup_iterations=11 exceeds train.iterations=10"),
    ({"schedule": "constant_poly", "warmup_iterations": 11, "iterations": 10},
     r"train.warmup_iterations=11 exceeds train.iterations=10"),
])
def test_domain_errors(kw, message):
    with pytest.raises(IfssError, match=message):
        check_train_config(train_cfg(**kw))


def test_warmup_longer_than_the_run_is_fine_for_schedules_without_warmup():
    check_train_config(train_cfg(schedule="poly", warmup_iterations=11, iterations=10))
