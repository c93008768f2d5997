"""SimFormer as a method: targets from pixel and image labels, the named loss terms, novel pixels
never read, the similarity transfer (SimNet learns from base pairs only, its teacher detached),
retraining, resume state, and the pair batches it trains on."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ifss.config import build_config
from ifss.data.batches import PairedBatches, ResumableBatches
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.methods.params import SimFormerParams
from ifss.methods.registry import get_method_class
from ifss.methods.simformer import SimFormer, image_targets
from ifss.models import build_model
from ifss.simformer.pairs import epoch_pairs

NUM_BASE, NUM_CLASSES = 16, 21  # synthetic 15-5: positions 0..15 base, 16..20 novel
TINY_MODEL = ["model.arch=maskformer", "model.backbone=resnet_tiny", "model.head_channels=32",
              "model.num_queries=8", "model.decoder_layers=2", "model.attention_heads=4",
              "model.ffn_channels=64", "model.dropout=0"]
CPU = Runtime(torch.device("cpu"))


def _cfg(*extra: str):
    return build_config(None, ["method=SimFormer", "task=15-5", "step=1",
                               "data.protocol=weakshot", "data.batch_size=4", *TINY_MODEL,
                               *extra])


def _method(cfg=None, **params) -> SimFormer:
    return SimFormer(SimFormerParams(**params), cfg or _cfg(), CPU)


def _model(cfg=None, seed: int = 0):
    torch.manual_seed(seed)
    return build_model((cfg or _cfg()).model, [NUM_BASE, NUM_CLASSES - NUM_BASE])


def _label(side: int = 32, base=(3, 5), novel: int | None = 17) -> torch.Tensor:
    """Background 0, two base squares, a novel square left void as the data layer leaves it
    (`novel` labels it instead), a void stripe."""
    label = torch.zeros(side, side, dtype=torch.long)
    label[2:12, 2:12] = base[0]
    label[2:12, 18:30] = base[1]
    label[16:28, 4:20] = 255 if novel is None else novel
    label[30:, :] = 255
    return label


def _batch(n: int = 2, novel_pixels: int | None = None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([_label(base=((3, 5), (5, 7), (3, 9), (7, 5))[i % 4],
                                 novel=novel_pixels) for i in range(n)])
    image_labels = torch.zeros(n, NUM_CLASSES)
    for i in range(n):
        image_labels[i, [0, *torch.unique(labels[i][labels[i] < NUM_BASE]).tolist()]] = 1
        image_labels[i, 17] = 1  # every image holds novel class 17 (position)
        if i % 2:
            image_labels[i, 19] = 1
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "label": labels,
            "image_labels": image_labels}


def _terms(method, model, batch, iteration: int = 0) -> dict[str, torch.Tensor]:
    method.before_step(iteration, 10)
    return method.loss(batch, model(batch["image"], upsample=False), None)


def _crosim(model=None, **params):
    method, model = _method(crosim=True, **params), model or _model()
    torch.manual_seed(1)
    modules = method.build_modules(model)
    assert set(modules) == {"simnet"} and modules["simnet"].dim == 32
    return method, model


def _values(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in terms.items()}


# -- targets ------------------------------------------------------------------------------------

def test_targets_base_with_masks_novel_from_image_labels():
    label = _label()
    image_labels = torch.zeros(NUM_CLASSES)
    image_labels[[0, 3, 5, 9, 17, 19]] = 1  # 9: a base class cropped away; 17, 19: novel
    classes, masks, has_mask = image_targets(label, image_labels, NUM_BASE)
    assert classes.tolist() == [0, 3, 5, 17, 19]
    assert has_mask.tolist() == [True, True, True, False, False]
    assert masks.shape == (5, 32, 32) and masks.dtype == torch.bool
    assert torch.equal(masks[1], label == 3) and not masks[3:].any()


def test_targets_never_read_novel_pixels_outside_retraining():
    labelled = _label(novel=18)
    image_labels = torch.zeros(NUM_CLASSES)
    image_labels[17] = 1
    classes, masks, has_mask = image_targets(labelled, image_labels, NUM_BASE)
    assert classes.tolist() == [0, 3, 5, 17] and has_mask.tolist() == [True] * 3 + [False]
    assert not masks[3].any()


def test_retraining_targets_are_every_labelled_class_with_its_mask():
    pseudo = _label(novel=17)
    image_labels = torch.zeros(NUM_CLASSES)
    image_labels[[17, 19]] = 1  # 19 has no pseudo-labelled pixel: not a target
    classes, masks, has_mask = image_targets(pseudo, image_labels, NUM_BASE, retrain=True)
    assert classes.tolist() == [0, 3, 5, 17] and bool(has_mask.all())
    assert torch.equal(masks[3], pseudo == 17)


# -- construction -------------------------------------------------------------------------------

def test_registry_builds_it_with_its_needs():
    assert get_method_class("SimFormer") is SimFormer
    assert SimFormer.data_needs(_cfg()) == {"label", "image_labels"}
    assert SimFormer.upsample_logits is False


def test_retraining_needs_pseudo_labels():
    with pytest.raises(IfssError, match="retraining reads pseudo labels: set data.train_labels"):
        _method(retrain=True)
    _method(_cfg("data.train_labels=pseudo"), retrain=True)


def test_refuses_other_architectures_and_odd_pair_batches():
    with pytest.raises(IfssError, match="model.arch=maskformer"):
        SimFormer(SimFormerParams(), build_config(None, ["method=SimFormer", "task=15-5",
                                                         "step=1"]), CPU)
    with pytest.raises(IfssError, match="data.batch_size=3 must be even"):
        _method(_cfg("data.batch_size=3"), crosim=True)
    _method(_cfg("data.batch_size=3"))  # single images: any size


# -- the loss -----------------------------------------------------------------------------------

def test_loss_terms_are_finite_and_reach_classifier_and_queries():
    method, model = _method(), _model()
    model.train()
    terms = _terms(method, model, _batch())
    assert set(terms) == {"loss_cls", "loss_mask_focal", "loss_mask_dice", "loss_comp"}
    assert all(torch.isfinite(t) and t.dim() == 0 for t in terms.values())
    assert float(terms["loss_comp"].detach()) > 0  # every image has a novel target
    sum(terms.values()).backward()
    for param in (model.classifier.weight, model.head.query_embed.weight,
                  model.body.conv1.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_comp_weight_zero_drops_the_term_and_deep_supervision_adds_up():
    model = _model()
    batch = _batch()
    assert "loss_comp" not in _terms(_method(comp_weight=0.0), model, batch)
    full = _values(_terms(_method(), model, batch))
    final = _values(_terms(_method(deep_supervision=False), model, batch))
    assert full["loss_cls"] > final["loss_cls"]  # + the auxiliary layer's


def test_loss_ignores_which_void_pixels_were_novel():
    """The data voids novel pixels; the loss is the same whether they carry a novel class
    (any) or 255, the image labels fixed."""
    model = _model()
    losses = []
    for novel in (None, 17, 20):
        batch = _batch(4, novel_pixels=novel)
        batch["image_labels"] = _batch(4)["image_labels"]
        method, _ = _crosim(model=model)
        losses.append(_values(_terms(method, model, batch)))
    assert losses[0] == losses[1] == losses[2]


def test_retraining_supervises_novel_pixels_as_masks():
    cfg, model = _cfg("data.train_labels=pseudo"), _model()
    retrain = _method(cfg, retrain=True)
    pseudo, void = _batch(novel_pixels=17), _batch()
    with_novel = _values(_terms(retrain, model, pseudo))
    assert with_novel["loss_comp"] == 0  # every target has a mask
    assert with_novel != _values(_terms(retrain, model, void))
    # the weak-shot step on the same labels never reads those pixels
    assert _values(_terms(_method(), model, pseudo)) == _values(_terms(_method(), model, void))


# -- similarity transfer ------------------------------------------------------------------------

def test_crosim_adds_sim_terms_and_simnet_learns_from_base_pairs_only():
    method, model = _crosim()
    terms = _terms(method, model, _batch(4))
    assert {"sim_base", "sim_distill"} <= set(terms)
    assert float(terms["sim_base"].detach()) > 0 and float(terms["sim_distill"].detach()) != 0
    simnet = method.simnet
    terms["sim_distill"].backward(retain_graph=True)
    assert all(p.grad is None for p in simnet.parameters())  # the teacher is detached
    assert model.classifier.weight.grad is not None  # the student's scores learn
    model.zero_grad(set_to_none=True)
    terms["sim_base"].backward()
    assert all(p.grad is not None for p in simnet.parameters())
    # SimNet's embeddings are detached: the base loss does not shape the model
    assert all(p.grad is None for p in model.parameters())


def test_distillation_only_for_pairs_sharing_a_novel_class():
    method, model = _crosim()
    batch = _batch(2)
    batch["image_labels"][1, 17] = 0  # image 1 holds 19 only, image 0 holds 17 only
    assert _values(_terms(method, model, batch))["sim_distill"] == 0


def test_points_repeat_per_iteration_and_bce_counts_resume():
    method, model = _crosim(distill="ce")
    batch = _batch(4)
    first = _values(_terms(method, model, batch, iteration=5))
    state = method.state_dict()
    assert state["balanced_bce"]["counts"].shape == (1, 2)
    again = _method(crosim=True, distill="ce")
    again.build_modules(model)
    again.simnet.load_state_dict(method.simnet.state_dict())
    again.load_state_dict(state)
    method.load_state_dict(state)
    a = _values(_terms(method, model, batch, iteration=6))
    b = _values(_terms(again, model, batch, iteration=6))
    assert a == b
    assert first != a  # another iteration draws other points
    assert _method().state_dict() == {}


# -- batches ------------------------------------------------------------------------------------

def _classes(n: int = 24) -> list[tuple[int, ...]]:
    """Sample i holds background, one base class and one or two novel classes."""
    return [(0, 1 + i % 5, 16 + i % 3) + ((19,) if i % 4 == 0 else ()) for i in range(n)]


def _paired(batch_size: int = 4, rank: int = 0, world: int = 1, n: int = 24) -> PairedBatches:
    return PairedBatches(_classes(n), range(1, 16), range(16, 21), batch_size, seed=3,
                         rank=rank, world=world)


def test_paired_batches_are_whole_pairs_of_the_epoch():
    batches = _paired()
    assert batches.batch_size == 4 and batches.per_epoch == 12 and len(batches.span(0, 12)) == 12
    pairs = []
    for batch in batches:
        assert len(batch) == 4
        pairs += [(batch[k][0], batch[k + 1][0]) for k in (0, 2)]
    classes = dict(enumerate(_classes()))
    assert sorted(pairs) == sorted(epoch_pairs(classes, range(1, 16), range(16, 21),
                                               np.random.default_rng([3, 0])))
    assert sorted(a for a, _ in pairs) == list(range(24))  # every image leads one pair
    seeds = [s for batch in _paired().span(0, 12) for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # each occurrence augmented on its own


def test_paired_batches_resume_from_the_iteration_alone():
    whole = list(_paired().span(0, 30))  # crosses two epoch boundaries
    assert list(_paired().span(17, 30)) == whole[17:]
    assert list(_paired().span(0, 12)) != list(_paired().span(12, 24))  # epochs differ


def test_paired_batches_refuse_odd_sizes_and_split_ranks():
    with pytest.raises(IfssError, match="data.batch_size=5 must be even"):
        _paired(batch_size=5)
    ranks = [list(_paired(rank=r, world=2).span(0, 6)) for r in range(2)]
    assert all(len(b) == 4 for batches in ranks for b in batches)
    seeds = [{s for b in batches for _, s in b} for batches in ranks]
    assert not seeds[0] & seeds[1]  # disjoint occurrences
    small = _paired(batch_size=8, world=2, n=6)  # 3 pairs per rank: batches of 3 pairs
    assert small.batch_size == 6 and small.per_epoch == 1


class _TrainSet:
    """What batch_source reads of a training set: its length, samples and image labels."""

    def __init__(self, classes: list[tuple[int, ...]]):
        self.samples = [(f"img{i}", None) for i in range(len(classes))]
        self.image_labels = {f"img{i}": c for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.samples)


def test_batch_source_pairs_only_with_crosim():
    data, cfg = _TrainSet(_classes()), _cfg()
    plain = _method().batch_source(data, cfg, CPU)
    assert type(plain) is ResumableBatches and plain.batch_size == 4
    paired = _method(crosim=True).batch_source(data, cfg, CPU)
    assert isinstance(paired, PairedBatches)
    assert paired.base == tuple(range(1, NUM_BASE))  # background does not pair images
    assert paired.novel == tuple(range(NUM_BASE, NUM_CLASSES))
    expected = PairedBatches(_classes(), range(1, 16), range(16, 21), 4, seed=cfg.seed)
    assert list(paired.span(0, 3)) == list(expected.span(0, 3))


def test_default_batch_source_is_the_engines_old_sampler():
    from ifss.methods.base import Method

    data = type("Data", (), {"__len__": lambda self: 10})()
    cfg = build_config(None, ["data.batch_size=3"])
    batches = Method(None, cfg, CPU).batch_source(data, cfg, CPU)
    expected = ResumableBatches(10, 3, cfg.seed)
    assert list(batches.span(0, 7)) == list(expected.span(0, 7))
    assert list(itertools.islice(iter(batches.span(2, 7)), 1)) == [list(expected.span(2, 3))[0]]
