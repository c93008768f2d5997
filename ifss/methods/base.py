"""The method interface. The defaults do plain fine-tuning with cross-entropy; a method overrides
only what it changes. Methods never own the training loop (ifss.engine does); they say what
happens at each point of it through the hooks below.

Order of a step (ifss.run): construct -> `build_modules(model)` -> carried `load_state_dict` and
module weights -> `prepare` -> engine: main phase (per iteration: `before_step`, forward, `loss`,
backward, `after_backward`, optimiser step, `after_step`), then `extra_phases` -> `finish` ->
evaluation -> `state_dict` and `modules` saved in model.pt for the next step. The engine asks
`batch_source` which samples form each batch of the main phase.
"""
from __future__ import annotations

import torch
from torch import nn

from ifss.config import RunConfig, TrainConfig
from ifss.data.batches import ResumableBatches
from ifss.data.build import DATA_KEYS, StepData
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.losses import segmentation_ce
from ifss.methods.params import NoParams
from ifss.models.norm import fix_norm_statistics


class Method:
    Params = NoParams
    uses_old_model = False  # True: the engine runs `self.old_model` on each batch
    trains = True  # False: no gradient step in the main phase (imprinting methods)
    needs: frozenset[str] = frozenset({"label"})  # keys of DATA_KEYS the step's batches carry
    upsample_logits = True  # False: out["logits"] (and the old model's) at the features' size
    unused_parameters = False  # True: some iterations leave parts of the model without gradient

    def __init__(self, params, cfg: RunConfig, runtime: Runtime):
        self.params, self.cfg, self.runtime = params, cfg, runtime
        self.step = cfg.step
        self.old_model: nn.Module | None = None
        self.carried: dict = {}  # the previous step's `state_dict()` (see `carry`)
        self._modules: dict[str, nn.Module] = {}
        self.data_needs(cfg)  # an unknown need fails here too, for a method built without data

    @classmethod
    def data_needs(cls, cfg: RunConfig) -> frozenset[str]:
        """What the batches of step `cfg.step` carry (keys of DATA_KEYS; read before the method
        is built, to build the step's data). A method whose steps differ overrides it (WILSON:
        pixel labels at step 0, image-level labels only at step k)."""
        unknown = set(cls.needs) - set(DATA_KEYS)
        if unknown:
            raise IfssError(f"method {cfg.method} asks for data {sorted(unknown)} that no step "
                            f"provides; available: {', '.join(DATA_KEYS)}")
        return frozenset(cls.needs)

    @classmethod
    def model_options(cls, cfg: RunConfig, state: dict | None = None) -> dict:
        """Extra keyword arguments of `ifss.models.build_model` for this method's model (SPN:
        the width of its class vectors); `state` is the checkpoint's model state, if any."""
        return {}

    # -- what the method owns -------------------------------------------------------------------

    def build_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Trainable parts the method owns, made for `model` (DWI's weight generator, WILSON's
        localizer): the engine moves, optimises, averages under DDP and checkpoints them like the
        model, and model.pt carries them to the next step. Called once, before `prepare`."""
        return {}

    def attach(self, model: nn.Module) -> None:
        self._modules = dict(self.build_modules(model))

    def modules(self) -> dict[str, nn.Module]:
        return self._modules

    def load_modules(self, states: dict[str, dict], source: str) -> set[str]:
        """Weights of the owned modules from a checkpoint; returns the names loaded."""
        loaded = set()
        for name, state in states.items():
            if name not in self._modules:
                continue  # a module this method does not own (another method's checkpoint)
            try:
                self._modules[name].load_state_dict(state)
            except RuntimeError as err:
                lines = str(err).splitlines()  # torch's first line only names the class
                detail = (lines[1:] or lines)[0].strip()
                raise IfssError(f"{source} holds a {name!r} that does not fit this run "
                                f"({detail}); give a checkpoint of this method and model "
                                "config") from None
            loaded.add(name)
        return loaded

    # -- before and after training --------------------------------------------------------------

    def prepare(self, model: nn.Module, old_model: nn.Module | None, data: StepData) -> None:
        """Before training: imprinting, classifier init, prototypes, memory banks."""
        if self.uses_old_model:
            self.old_model = old_model

    def param_groups(self, model: nn.Module, train: TrainConfig) -> list[dict]:
        """Parameter groups with learning-rate multipliers; multiplier 0 freezes a group.
        `train.lr_mult` overrides any of them by name."""
        groups = model.param_groups()
        return [
            {"name": "body", "params": groups["body"], "lr_mult": 1.0},
            {"name": "head", "params": groups["head"], "lr_mult": train.lr_head},
            {"name": "classifier", "params": groups["classifier"], "lr_mult": train.lr_cls},
        ] + [{"name": name, "params": list(module.parameters()),
              "lr_mult": self.module_lr_mult(name, train)}
             for name, module in self._modules.items()]

    def module_lr_mult(self, name: str, train: TrainConfig) -> float:
        """The lr multiplier of the owned module `name` (WILSON's localizer and the GFSS
        projection head have their own learning rate)."""
        return 1.0

    def train_mode(self, model: nn.Module) -> None:
        """Which parts train and which stay in eval mode, set before the first iteration."""
        model.train()
        for module in self._modules.values():
            module.train()
        if self.cfg.train.fix_bn:
            fix_norm_statistics(model)

    def batch_source(self, dataset, cfg: RunConfig, runtime: Runtime) -> ResumableBatches:
        """Which samples of `dataset` (the step's training set) each iteration of the main phase
        sees: a ResumableBatches (or subclass: same span / per_epoch contract), computable from
        the iteration number alone. Default: shuffled per epoch (SimFormer: image pairs)."""
        return ResumableBatches(len(dataset), cfg.data.batch_size, cfg.seed, runtime.rank,
                                runtime.world)

    def extra_phases(self, model: nn.Module, data: StepData) -> list:
        """Training phases after the main one (ifss.engine.Phase), run by the same loop."""
        return []

    def finish(self, model: nn.Module, data: StepData) -> None:
        """After every phase, before evaluation."""

    # -- per iteration --------------------------------------------------------------------------

    def before_step(self, iteration: int, total: int) -> None:
        """Before the forward pass of iteration `iteration` (0-based) of `total`."""

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        """Every term named, so each is logged; the engine sums them."""
        return {"ce": segmentation_ce(out["logits"], batch["label"])}

    def after_backward(self, iteration: int) -> None:
        """Gradients are there (averaged over processes), the parameters not yet updated."""

    def after_step(self, iteration: int) -> None:
        """The optimiser has updated the parameters."""

    # -- what travels to the next step ----------------------------------------------------------

    def state_dict(self) -> dict:
        """What must travel to the next step besides the owned modules (memory, prototypes,
        importance weights)."""
        return {}

    def carry(self, state: dict) -> None:
        """The previous step's `state_dict()`, from its model.pt, handed over before `prepare`
        (which sizes this step's state and reads `self.carried`)."""
        self.carried = state

    def load_state_dict(self, state: dict) -> None:
        """This step's own state from resume.pt, after `prepare`."""
