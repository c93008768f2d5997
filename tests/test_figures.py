"""The MCLOS paper's figures from two tiny runs of one setting."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from ifss.config import build_config
from ifss.errors import IfssError
from ifss.figures import choose_images, choose_pixels, colourise, embeddings_at
from ifss.run import train_run

SCRIPT = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "figures.py"


@pytest.fixture(scope="module")
def two_runs(synth_root, tmp_path_factory):
    """Step-1 models of PIFS (from COS) and MCLOS (from its own step 0), as the paper compares."""
    out = tmp_path_factory.mktemp("fig")
    small = {"train.iterations": 2}
    mclos = {"params.memory_size": 32}
    for base, method, extra in (("COS", "PIFS", {}), ("MCLOS", "MCLOS", mclos)):
        step0 = out / f"{base}-step0"
        train_run(build_config(None, tiny_overrides(synth_root, method=base, **small, **extra)),
                  step0)
        train_run(build_config(None, tiny_overrides(
            synth_root, method=method, step=1, nshot=1, previous=step0 / "model.pt", **small,
            **extra)), out / method)
    return out


def test_figures_script_writes_pngs(two_runs, synth_root, tmp_path, capsys):
    from threadpoolctl import threadpool_limits

    spec = importlib.util.spec_from_file_location("figures_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    qual, tsne = tmp_path / "q" / "qualitative.png", tmp_path / "tsne.png"
    with threadpool_limits(1):  # a loaded CI machine stalls OpenMP t-SNE with more threads
        code = script.main(["--run", f"PIFS={two_runs / 'PIFS' / 'model.pt'}",
                            "--run", f"MCLOS={two_runs / 'MCLOS' / 'model.pt'}",
                            "--qualitative", str(qual), "--tsne", str(tsne),
                            "--data-root", str(synth_root), "--num-images", "2",
                            "--tsne-images", "4", "--per-class", "10", "--tsne-iterations", "250"])
    assert code == 0
    for png in (qual, tsne):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"silhouette"' in capsys.readouterr().out and not list(tmp_path.rglob(".*.tmp"))
    with pytest.raises(SystemExit):  # NAME=path is required
        script.main(["--run", "COS", "--qualitative", "a.png", "--tsne", "b.png"])


def test_runs_of_different_settings_are_refused(two_runs, synth_root, tmp_path):
    from ifss.figures import qualitative_figure

    other = tmp_path / "other"
    train_run(build_config(None, tiny_overrides(synth_root, method="COS", task="15-5",
                                                **{"train.iterations": 1})), other)
    with pytest.raises(IfssError, match="differ in dataset/task/step"):
        qualitative_figure({"a": two_runs / "PIFS" / "model.pt", "b": other / "model.pt"},
                           tmp_path / "q.png", synth_root)
    assert not (tmp_path / "q.png").exists()


def test_helpers():
    labels = [torch.tensor([[0, 0], [255, 1]]), torch.tensor([[3, 3], [3, 0]]),
              torch.tensor([[255, 255], [255, 255]])]
    assert choose_images(labels, first_novel=3, count=2) == [1, 0]
    rows = choose_pixels(labels, per_class=2, seed=0)
    assert np.bincount(rows[:, 3]).tolist() == [2, 1, 0, 2]
    assert all(int(labels[i][y, x]) == c for i, y, x, c in rows)
    rgb = colourise(np.array([[0, 1, 255]]), class_ids=[0, 15])
    assert rgb.tolist() == [[[0, 0, 0], [192, 128, 128], [224, 224, 192]]]  # VOC person, void
    # reading features at label pixels agrees with the logits' bilinear upsampling
    model = torch.nn.Module()
    model.body = torch.nn.AvgPool2d(2)  # "features" at half the label size
    model.head = torch.nn.Identity()
    model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    image = torch.randn(3, 8, 12)
    up = torch.nn.functional.interpolate(model.body(image[None]), size=(8, 12), mode="bilinear",
                                         align_corners=False)[0]
    pts = np.array([[0, 0], [3, 5], [7, 11], [4, 2]])
    want = torch.nn.functional.normalize(up[:, pts[:, 0], pts[:, 1]].T, dim=1)
    assert torch.allclose(embeddings_at(model, image, pts), want, atol=1e-5)
