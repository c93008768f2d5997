"""The method interface. The defaults do plain fine-tuning with cross-entropy; a method overrides
only what it changes. Methods never own the training loop (ifss.engine does)."""
from __future__ import annotations

import torch
from torch import nn

from ifss.config import RunConfig, TrainConfig
from ifss.data.build import StepData
from ifss.distributed import Runtime
from ifss.losses import segmentation_ce
from ifss.methods.params import NoParams


class Method:
    Params = NoParams
    uses_old_model = False  # True: the engine runs `self.old_model` on each batch

    def __init__(self, params, cfg: RunConfig, runtime: Runtime):
        self.params, self.cfg, self.runtime = params, cfg, runtime
        self.step = cfg.step
        self.old_model: nn.Module | None = None

    @classmethod
    def model_options(cls, cfg: RunConfig, state: dict | None = None) -> dict:
        """Extra keyword arguments of `ifss.models.build_model` for this method's model (SPN:
        the width of its class vectors); `state` is the checkpoint's model state, if any."""
        return {}

    def prepare(self, model: nn.Module, old_model: nn.Module | None, data: StepData) -> None:
        """Before training: imprinting, classifier init, prototypes, memory banks."""
        if self.uses_old_model:
            self.old_model = old_model

    def param_groups(self, model: nn.Module, train: TrainConfig) -> list[dict]:
        """Parameter groups with learning-rate multipliers; multiplier 0 freezes a group."""
        groups = model.param_groups()
        return [
            {"name": "body", "params": groups["body"], "lr_mult": 1.0},
            {"name": "head", "params": groups["head"], "lr_mult": train.lr_head},
            {"name": "classifier", "params": groups["classifier"], "lr_mult": train.lr_cls},
        ]

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        """Every term named, so each is logged; the engine sums them."""
        return {"ce": segmentation_ce(out["logits"], batch["label"])}

    def finish(self, model: nn.Module, data: StepData) -> None:
        """After training (DWI's cool-down, RT's retraining)."""

    def evaluate(self, model: nn.Module, data: StepData) -> dict:
        from ifss.engine import evaluate_dense

        return evaluate_dense(
            model, data.test, data.task.num_base, self.runtime,
            self.cfg.eval.batch_size, self.cfg.data.workers,
        )

    def state_dict(self) -> dict:
        """What must travel to the next step (memory, prototypes, importance weights)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
