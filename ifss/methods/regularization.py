"""EWC, PI and RW: fine-tuning plus a quadratic penalty on moving the parameters that mattered.

Seed 004 runs them as SDR's `--method EWC|PI|RW` (MiB's utils/regularizer.py; research
wilson_sdr_gfss_simformer.md §B.4). Every step trains with cross-entropy and, while it trains,
estimates an importance for every parameter; from step 1 on the loss has one more term

    reg = λ Σ_i W_i (θ_i − θ_old,i)²     over the parameters the previous step had

(the new classifier step moves freely), θ_old their values at the end of the previous step (the
model this step starts from), W the previous step's importance, each tensor min-max normalised,
norm(x) = (x − min x) / (max x − min x + 1e-8) (MiB's default; `normalize: false` skips it):

  EWC  F ← α g² + (1 − α) F every iteration, from F = 1 at a parameter's first step and from
       the previous F after; W = norm(F_old).
  PI   ω ← ω − g Δθ every iteration (Δθ the optimiser step's update); at the end of the step
       Ω = max(ω / ((θ_end − θ_start)² + ξ), 0) + Ω_old, summed over steps as MiB does (its
       comment says averaged); W = norm(Ω_old).
  RW   F as EWC, and ω as PI closed every `reg_iterations` iterations into the path score
       s ← s + ω / (½ F (θ − θ_window)² + ε), ε = 1e-8, ω ← 0; at the end of the step
       s = ½ (max(s, 0) + s_old) (averaged with the previous step's, as MiB);
       W = norm(F_old) + norm(s_old).

g is the gradient of the other terms (cross-entropy), read after the backward pass: as in the
originals, which updated the importance before backpropagating the penalty, the penalty's own
gradient 2 λ W (θ − θ_old) is added to the parameters' gradients afterwards, in closed form
(no autograd graph over the whole model). The logged `reg` is the penalty's value.

Not reproduced from MiB's code: its PI and RW paired each gradient with the PREVIOUS update
(g_t (θ_{t−1} − θ_t), from a snapshot taken at the last update), and RW's score used one gradient
times the whole window's displacement; here g is the gradient that made the update (Zenke et
al.'s path integral; RWalk's score, whose numerator sums −g Δθ over every iteration of the
window). RW's last, partial window is closed at the end of the step (MiB dropped it). MiB's
torch.cuda.amp trainer read gradients multiplied by the loss scale; fp16 loss scaling is refused
here for that reason (bf16 and fp32 have no scale).

Every accumulator is one flat tensor over all tracked parameters (with a view per parameter), so
an update is a few whole-model kernels; parameters and gradients are gathered into such buffers
with one torch._foreach_copy_ each. No value is read back to the host while training (once per
step, before it, the largest penalty weight for a stability warning). Under DDP every process
sees the averaged gradient, so every process holds the same importance. `state_dict()` is the
resumable accumulators while training and, after `finish`, the importance for the next step
(CPU tensors keyed by parameter name, with the step and a `final` flag).
"""
from __future__ import annotations

import abc
import logging

import torch
from torch import nn

from ifss.errors import IfssError
from ifss.losses import segmentation_ce
from ifss.methods.base import Method
from ifss.methods.params import EWCParams, PIParams, RWParams

log = logging.getLogger("ifss")
EPS = 1e-8  # MiB's constant: normalisation and RW's score denominator
Tensors = list[torch.Tensor]


# --- the formulas, elementwise (a trailing _ updates the first argument in place) -----------------

def normalised(t: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation of one parameter's importance to [0, 1) (MiB's `normalize_fn`)."""
    low = t.min()
    return (t - low) / (t.max() - low + EPS)


def update_fisher_(fisher: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """F ← α g² + (1 − α) F."""
    return fisher.mul_(1.0 - alpha).addcmul_(grad, grad, value=alpha)


def accumulate_path_(omega: torch.Tensor, grad: torch.Tensor,
                     step_back: torch.Tensor) -> torch.Tensor:
    """ω ← ω − g Δθ, given `step_back` = −Δθ = θ_before − θ_after."""
    return omega.addcmul_(grad, step_back)


def path_importance(omega: torch.Tensor, moved: torch.Tensor, damping: float) -> torch.Tensor:
    """PI's Ω = max(ω / (moved² + ξ), 0), `moved` = θ_end − θ_start."""
    return (omega / (moved * moved + damping)).clamp_min_(0.0)


def add_window_score_(score: torch.Tensor, omega: torch.Tensor, fisher: torch.Tensor,
                      moved: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """RW: s ← s + ω / (½ F moved² + ε), `moved` = θ − θ_window (overwritten)."""
    return score.addcdiv_(omega, moved.mul_(moved).mul_(fisher).mul_(0.5).add_(eps))


def penalty_(diff: torch.Tensor, root_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ W d², W d) of the 1-D d = θ − θ_old, from √W: the penalty and HALF its gradient
    (d is overwritten with W d)."""
    diff.mul_(root_weights)
    value = torch.dot(diff, diff)
    return value, diff.mul_(root_weights)


def flat_like(tensors: Tensors, fill: float = 0.0) -> tuple[torch.Tensor, Tensors]:
    """A 1-D tensor as long as `tensors` together, filled with `fill`, and its views shaped as
    each of them."""
    first = tensors[0]
    flat = torch.full((sum(t.numel() for t in tensors),), fill, dtype=first.dtype,
                      device=first.device)
    return flat, split_as(flat, tensors)


def split_as(flat: torch.Tensor, tensors: Tensors) -> Tensors:
    return [v.view(t.shape) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def flat_copy(tensors: Tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


# --- the methods ---------------------------------------------------------------------------------

class ImportanceRegularization(Method, abc.ABC):
    """Cross-entropy + λ Σ W (θ − θ_old)²; subclasses say which importance they track."""

    kind = ""  # the state's tag: ewc | pi | rw
    tracks_fisher = False  # the running Fisher F (EWC, RW)
    tracks_path = False  # the path integral ω (PI, RW)
    running: tuple[str, ...] = ()  # flat accumulators (attribute = state key) a resume restores
    final_keys: tuple[str, ...] = ()  # state keys of the importance the next step reads

    def __init__(self, params, cfg, runtime):
        super().__init__(params, cfg, runtime)
        if runtime.device.type == "cuda" and runtime.amp == "fp16":
            raise IfssError(f"{cfg.method} reads the gradients after the backward pass, which "
                            "fp16 loss scaling multiplies by an unknown factor; use "
                            "train.amp=bf16 or none")
        self._previous: dict | None = None  # the previous step's final state
        self._resume: dict | None = None  # a resume.pt's state of this step
        self._final: dict | None = None
        self._bound = False
        self._old: Tensors = []  # the parameters the previous step had
        self._penalised = False  # the penalty ran: its gradient is due in after_backward

    # -- before training ---------------------------------------------------------------------------

    def prepare(self, model: nn.Module, old_model: nn.Module | None, data) -> None:
        super().prepare(model, old_model, data)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, self.tensors = [n for n, _ in named], [p for _, p in named]
        previous = self._previous
        if self.step > 0 and previous is None:
            raise IfssError(f"{self.cfg.method} step {self.step} needs the importance that its "
                            f"step-{self.step - 1} run saved in model.pt; give previous= the "
                            f"{self.cfg.method} step-{self.step - 1} model.pt")
        with torch.no_grad():
            carried = self._carried(previous, dict(named)) if previous else {}
            self._old = [p for n, p in named if n in carried]
            if self._old:
                self._theta_old = flat_copy(self._old)
                weights = torch.cat([carried[n].reshape(-1) for n in self.names if n in carried])
                self._root_weights = weights.mul_(self.params.importance).sqrt_()
                self._diff, self._diff_views = flat_like(self._old)
            self._grad, self._grad_views = flat_like(self.tensors)
            if self.tracks_path:
                self._before, self._before_views = flat_like(self.tensors)
            self.start_accumulators(previous or {})
        if self._old:
            log.info("%s: penalty on %d of %d parameter tensors (%d values)", self.cfg.method,
                     len(self._old), len(self.tensors), self._theta_old.numel())
            self._check_stability(model)
        self._bound = True
        if self._resume is not None:
            self._restore(self._resume)

    def _carried(self, previous: dict, named: dict) -> dict[str, torch.Tensor]:
        """Penalty weights (before λ) by parameter name, from the previous step's importance."""
        missing = [key for key in self.final_keys if not isinstance(previous.get(key), dict)]
        names = set(previous.get(self.final_keys[0], {}))
        if missing or any(set(previous[key]) != names for key in self.final_keys):
            raise IfssError(f"the previous model.pt's {self.kind} state lacks or mismatches "
                            f"{', '.join(missing or self.final_keys)}; give the model.pt of "
                            f"{self.cfg.method}'s step {self.step - 1}")
        for name in sorted(names):
            value = previous[self.final_keys[0]][name]
            if name not in named or named[name].shape != value.shape:
                have = tuple(named[name].shape) if name in named else "no such parameter"
                raise IfssError(
                    f"the previous model.pt holds {self.kind} importance for {name} "
                    f"{tuple(value.shape)}, but this model has {have}; give the model.pt of "
                    f"{self.cfg.method}'s step {self.step - 1} with the same model config")
        norm = normalised if self.params.normalize else (lambda t: t)
        return {name: self.penalty_weight(
                    {k: previous[k][name].to(named[name].device, torch.float32)
                     for k in self.final_keys}, norm)
                for name in names}

    def _check_stability(self, model: nn.Module) -> None:
        """Warn when SGD diverges on the penalty alone: on f = ½ h d² it needs lr h below
        2 (1 + β) (heavy ball) or 2 (1 + β) / (1 + 2 β) (Nesterov), and h = 2 λ W here."""
        train = self.cfg.train
        if train.optimizer != "sgd":
            return
        beta = train.momentum
        limit = 2 * (1 + beta) / (1 + 2 * beta) if train.nesterov else 2 * (1 + beta)
        lr = train.lr * max(train.lr_mult.get(g["name"], g["lr_mult"])
                            for g in self.param_groups(model, train))
        top = 2 * float(self._root_weights.max()) ** 2  # one read, once per step
        if lr * top > limit:
            log.warning("%s: lr %.3g x the penalty's largest curvature %.3g = %.3g exceeds %.3g, "
                        "above which SGD%s with momentum %s diverges on it: the most important "
                        "old parameters will oscillate away; lower train.lr or params.importance",
                        self.cfg.method, lr, top, lr * top, limit,
                        " (Nesterov)" if train.nesterov else "", beta)

    def start_accumulators(self, previous: dict) -> None:
        if self.tracks_fisher:  # from the previous F, 1 at a parameter's first step
            self.fisher, views = flat_like(self.tensors, fill=1.0)
            carried = previous.get("fisher", {})
            for name, view in zip(self.names, views):
                if name in carried:
                    view.copy_(carried[name])
        if self.tracks_path:
            self.omega = torch.zeros_like(self._grad)

    # -- per iteration -----------------------------------------------------------------------------

    def penalty(self) -> torch.Tensor:
        """λ Σ W (θ − θ_old)² at the current parameters (its gradient waits for after_backward)."""
        with torch.no_grad(), torch.autocast(self._diff.device.type, enabled=False):
            torch._foreach_copy_(self._diff_views, self._old)
            value, _ = penalty_(self._diff.sub_(self._theta_old), self._root_weights)
        self._penalised = True
        return value

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        terms = {"ce": segmentation_ce(out["logits"], batch["label"])}
        if self._old:
            terms["reg"] = self.penalty()
        return terms

    @torch.no_grad()
    def after_backward(self, iteration: int) -> None:
        # g: the other terms' gradient. A parameter without one (its group's lr multiplier is 0)
        # keeps its importance.
        grads = [p.grad for p in self.tensors]
        if all(g is not None for g in grads):
            torch._foreach_copy_(self._grad_views, grads)
            if self.tracks_fisher:
                update_fisher_(self.fisher, self._grad, self.params.alpha)
        else:
            self._grad.zero_()
            live = [i for i, g in enumerate(grads) if g is not None]
            if self.tracks_fisher:
                fisher = split_as(self.fisher, self.tensors)
            for i in live:
                self._grad_views[i].copy_(grads[i])
                if self.tracks_fisher:
                    update_fisher_(fisher[i], self._grad_views[i], self.params.alpha)
        if self.tracks_path:
            torch._foreach_copy_(self._before_views, self.tensors)
        if self._penalised:  # the penalty's own gradient, 2 W (θ − θ_old) (_diff holds W d)
            present, added = [], []
            for p, half in zip(self._old, self._diff_views):
                if p.grad is not None:
                    present.append(p.grad)
                    added.append(half)
                elif p.requires_grad:  # in no other term
                    p.grad = half.mul(2.0)
            if present:
                torch._foreach_add_(present, added, alpha=2.0)
            self._penalised = False

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        if self.tracks_path:
            torch._foreach_sub_(self._before_views, self.tensors)  # θ_before − θ_after
            accumulate_path_(self.omega, self._grad, self._before)

    def _parameters_now(self) -> torch.Tensor:
        """θ as one flat tensor (in the `_before` buffer, free between iterations)."""
        torch._foreach_copy_(self._before_views, self.tensors)
        return self._before

    # -- what travels ------------------------------------------------------------------------------

    @torch.no_grad()
    def finish(self, model: nn.Module, data) -> None:
        self._final = {"kind": self.kind, "step": self.step, "final": True,
                       **{k: self._by_name(v) for k, v in self.final_importance().items()}}

    def state_dict(self) -> dict:
        if self._final is not None:
            return self._final
        if not self._bound:
            return {}
        return {"kind": self.kind, "step": self.step, "final": False,
                **{key: self._by_name(getattr(self, key)) for key in self.running}}

    def carry(self, state: dict) -> None:
        self.load_state_dict(state)  # a final state of the step before: checked and kept

    def load_state_dict(self, state: dict) -> None:
        """The previous step's final importance (via `carry`, before `prepare`) or this step's
        running accumulators (resume); anything else is refused."""
        if not state:
            return
        kind, step, final = state.get("kind"), state.get("step"), state.get("final")
        if kind != self.kind:
            raise IfssError(f"the method state given to {self.cfg.method} holds {kind!r} "
                            f"importance, not {self.kind!r}; give a model.pt of "
                            f"{self.cfg.method}")
        if final and step == self.step - 1:
            self._previous = state
        elif not final and step == self.step:
            self._resume = state
            if self._bound:
                self._restore(state)
        else:
            raise IfssError(f"{self.cfg.method} step {self.step} was given the "
                            f"{'final' if final else 'running'} {kind} state of step {step}; "
                            f"give previous= the model.pt of step {self.step - 1}")

    @torch.no_grad()
    def _restore(self, state: dict) -> None:
        for key in self.running:
            saved = state[key]
            torch._foreach_copy_(split_as(getattr(self, key), self.tensors),
                                 [saved[n] for n in self.names])

    def _by_name(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: v.to("cpu", copy=True)
                for n, v in zip(self.names, split_as(flat, self.tensors))}

    def _with_previous(self, flat: torch.Tensor, key: str) -> list[tuple]:
        """(view of `flat`, the previous step's `key` importance) of each parameter that has one."""
        old = (self._previous or {}).get(key, {})
        views = split_as(flat, self.tensors)
        return [(v, old[n].to(v.device)) for n, v in zip(self.names, views) if n in old]

    # -- what each method defines ------------------------------------------------------------------

    @abc.abstractmethod
    def final_importance(self) -> dict[str, torch.Tensor]:
        """The importance the next step reads, flat, by state key."""

    @abc.abstractmethod
    def penalty_weight(self, importance: dict[str, torch.Tensor], norm) -> torch.Tensor:
        """W of one parameter from its `final_keys` entries, `norm` the normalisation."""


class ElasticWeightConsolidation(ImportanceRegularization):
    Params = EWCParams
    kind, tracks_fisher = "ewc", True
    running = final_keys = ("fisher",)

    def final_importance(self) -> dict[str, torch.Tensor]:
        return {"fisher": self.fisher}

    def penalty_weight(self, importance, norm):
        return norm(importance["fisher"])


class PathIntegral(ImportanceRegularization):
    Params = PIParams
    kind, tracks_path = "pi", True
    running = ("omega", "start")
    final_keys = ("score",)

    def start_accumulators(self, previous: dict) -> None:
        super().start_accumulators(previous)
        self.start = flat_copy(self.tensors)

    def final_importance(self) -> dict[str, torch.Tensor]:
        moved = self._parameters_now() - self.start
        score = path_importance(self.omega, moved, self.params.damping)
        for view, old in self._with_previous(score, "score"):
            view.add_(old)  # summed over steps
        return {"score": score}

    def penalty_weight(self, importance, norm):
        return norm(importance["score"])


class RiemannianWalk(ImportanceRegularization):
    Params = RWParams
    kind, tracks_fisher, tracks_path = "rw", True, True
    running = ("fisher", "omega", "path_score", "window_start")
    final_keys = ("fisher", "score")

    def start_accumulators(self, previous: dict) -> None:
        super().start_accumulators(previous)
        self.path_score = torch.zeros_like(self._grad)
        self.window_start = flat_copy(self.tensors)

    def after_step(self, iteration: int) -> None:
        super().after_step(iteration)
        if (iteration + 1) % self.params.reg_iterations == 0:
            self._close_window()

    @torch.no_grad()
    def _close_window(self) -> None:
        """s ← s + ω / (½ F (θ − θ_window)² + ε); ω ← 0; θ_window ← θ."""
        now = self._parameters_now()
        moved = now - self.window_start
        self.window_start.copy_(now)
        add_window_score_(self.path_score, self.omega, self.fisher, moved)
        self.omega.zero_()

    def final_importance(self) -> dict[str, torch.Tensor]:
        self._close_window()  # the last, partial window (nothing to add right after a close)
        score = self.path_score.clamp_min(0.0)
        for view, old in self._with_previous(score, "score"):
            view.add_(old).mul_(0.5)  # averaged with the previous step's
        return {"fisher": self.fisher, "score": score}

    def penalty_weight(self, importance, norm):
        return norm(importance["fisher"]) + norm(importance["score"])
