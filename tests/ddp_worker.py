"""Run by `torchrun` in test_distributed.py: one training run, then each rank saves its parameters."""
import sys

import torch

from ifss.config import build_config
from ifss.run import train_run


def main(out: str, dump: str, *overrides: str) -> None:
    import ifss.engine as engine

    captured = {}
    original = engine.train

    def train_and_capture(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        captured["params"] = {k: v.detach().clone() for k, v in model.named_parameters()}
        return result

    engine.train = train_and_capture
    cfg = build_config(None, list(overrides))
    train_run(cfg, out)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(
        __import__("os").environ["RANK"])
    torch.save(captured["params"], f"{dump}/rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
