import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic benchmark shared by the tests that read data (read-only for them)."""
    from ifss.data.synthetic import generate

    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate(root, seed=0, n_train=400, n_val=40, size=48)
    return root


def tiny_overrides(root: Path, **extra) -> list[str]:
    """Config overrides for a run that takes a second or two on CPU."""
    base = {
        "data.root": str(root), "data.crop_size": 48, "data.batch_size": 8,
        "train.iterations": 6, "train.log_every": 2, "eval.batch_size": 20,
        "model.head_channels": 16,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
