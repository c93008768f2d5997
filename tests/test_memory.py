"""Pixel / region memory: FIFO wrap with K entries at once, masking, growth, sampling, state."""
import pytest
import torch
import torch.nn.functional as F

from ifss.errors import IfssError
from ifss.memory import ClassQueue, ContrastMemory, batch_entries, labels_at


def rows(values, dim=2):
    """Entries whose first coordinate is the given value (easy to read back)."""
    out = torch.zeros(len(values), dim)
    out[:, 0] = torch.tensor(values, dtype=torch.float)
    return out


def firsts(queue, c, bank=0):
    return queue.entries[bank, c, :, 0].tolist()


def test_push_wraps_with_k_entries_at_once():
    q = ClassQueue(num_classes=2, size=5, dim=2)
    q.push(rows([1, 2, 3]), torch.tensor([0, 0, 0]))
    assert q.ptr.tolist() == [[3, 0]] and q.count.tolist() == [[3, 0]]
    q.push(rows([4, 5, 6, 7]), torch.zeros(4, dtype=torch.long))  # 2 slots left, 4 entries
    assert firsts(q, 0) == [6, 7, 3, 4, 5]
    assert q.ptr.tolist() == [[2, 0]] and q.count.tolist() == [[5, 0]]
    assert firsts(q, 1) == [0] * 5


def test_push_more_than_the_bank_keeps_the_newest():
    q = ClassQueue(num_classes=1, size=5, dim=2)
    q.push(rows([1, 2, 3]), torch.zeros(3, dtype=torch.long))
    q.push(rows(list(range(10, 17))), torch.zeros(7, dtype=torch.long))  # K=7 > S=5, ptr 3
    # entry r goes to slot (3 + r) % 5; the two oldest (10, 11) are overwritten in the same push
    assert firsts(q, 0) == [12, 13, 14, 15, 16]
    assert q.ptr.tolist() == [[0]] and q.count.tolist() == [[5]]
    q.push(rows([20]), torch.zeros(1, dtype=torch.long))
    assert firsts(q, 0) == [20, 13, 14, 15, 16]


def test_push_mixed_classes_banks_and_masked_entries():
    q = ClassQueue(num_classes=3, size=4, dim=2, banks=2)
    classes = torch.tensor([2, 0, 2, 1, 0, 2, 0])
    valid = torch.tensor([True, True, False, True, True, True, True])
    bank = torch.tensor([0, 0, 0, 0, 0, 0, 1])
    q.push(rows([1, 2, 3, 4, 5, 6, 7]), classes, valid, bank)
    assert firsts(q, 0) == [2, 5, 0, 0]
    assert firsts(q, 1) == [4, 0, 0, 0]
    assert firsts(q, 2) == [1, 6, 0, 0]  # the masked 3 is not written
    assert firsts(q, 0, bank=1) == [7, 0, 0, 0]  # the other bank's queue of class 0
    assert q.ptr.tolist() == [[2, 1, 2], [1, 0, 0]] and q.count.tolist() == q.ptr.tolist()
    assert q.filled().sum(-1).tolist() == [[2, 1, 2], [1, 0, 0]]
    assert q.storage.shape == (2 * 3 * 4 + 1, 2)  # one spare row takes the masked writes


def test_grow_keeps_entries_and_adds_empty_classes():
    q = ClassQueue(num_classes=2, size=3, dim=2, banks=2)
    q.push(rows([1, 2, 3, 4]), torch.tensor([0, 1, 1, 1]))
    q.push(rows([5, 8]), torch.tensor([1, 0]), bank=torch.tensor([0, 1]))
    q.grow(4)
    assert q.num_classes == 4 and q.entries.shape == (2, 4, 3, 2)
    assert firsts(q, 0) == [1, 0, 0] and firsts(q, 1) == [5, 3, 4]
    assert firsts(q, 0, bank=1) == [8, 0, 0] and firsts(q, 3, bank=1) == [0, 0, 0]
    assert q.ptr.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert q.count.tolist() == [[1, 3, 0, 0], [1, 0, 0, 0]]
    q.push(rows([9]), torch.tensor([3]))
    assert firsts(q, 3) == [9, 0, 0] and q.count.tolist()[0] == [1, 3, 0, 1]
    with pytest.raises(IfssError, match="cannot shrink"):
        q.grow(2)


def test_candidates_sample_only_filled_slots():
    torch.manual_seed(0)
    q = ClassQueue(num_classes=3, size=10, dim=2)
    q.push(rows(list(range(1, 8))), torch.zeros(7, dtype=torch.long))  # class 0: 7 filled
    q.push(rows([50, 51]), torch.tensor([2, 2]))  # class 2: 2 filled, class 1 empty
    entries, classes, valid, by_class = q.candidates(per_class=4)
    assert entries.shape == (12, 2) and classes.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert valid.view(3, 4).sum(1).tolist() == [4, 0, 2]
    assert by_class.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    got0 = entries[:4, 0].tolist()
    assert len(set(got0)) == 4 and set(got0) <= set(range(1, 8))  # without replacement
    assert sorted(entries[8:12][valid[8:12], 0].tolist()) == [50, 51]
    entries, classes, valid, _ = q.candidates(per_class=0)  # everything, a view
    assert entries.shape == (30, 2) and valid.sum() == 9
    assert entries.data_ptr() == q.storage.data_ptr()


def test_batch_entries_region_means_and_random_pixels():
    torch.manual_seed(0)
    feats = torch.randn(2, 4, 3, 3)
    labels = torch.tensor([[[0, 0, 1], [1, 1, 255], [0, 2, 2]],
                           [[1, 1, 1], [1, 1, 1], [255, 255, 255]]])
    region, present, pixels, pvalid = batch_entries(feats, labels, num_classes=4, k=2)
    assert present.tolist() == [[True, True, True, False], [False, True, False, False]]
    emb = F.normalize(feats.flatten(2).transpose(1, 2), dim=2)  # N x 9 x D
    lab = labels.flatten(1)
    for n in range(2):
        for c in range(4):
            mask = lab[n] == c
            if mask.any():
                want = F.normalize(emb[n][mask].mean(0), dim=0)
                assert torch.allclose(region[n, c], want, atol=1e-6)
                # each pixel entry is one of the class's pixel embeddings, no pixel twice
                picked = pixels[n, c][pvalid[n, c]]
                assert len(picked) == min(2, int(mask.sum()))
                dist = torch.cdist(picked, emb[n][mask])
                assert (dist.min(1).values < 1e-6).all()
                assert len({int(i) for i in dist.argmin(1)}) == len(picked)
            else:
                assert not pvalid[n, c].any() and torch.all(region[n, c] == 0)


def test_memory_update_and_state_round_trip_with_growth():
    torch.manual_seed(0)
    mem = ContrastMemory(num_classes=3, size=6, dim=4, region=True)
    feats = torch.randn(2, 4, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    mem.update(feats, labels, pixels_per_class=2)
    present = torch.stack([(labels == c).flatten(1).any(1) for c in range(3)], 1)
    assert mem.count("region").tolist() == present.sum(0).tolist()
    assert mem.count("pixel").tolist() == [
        sum(min(2, int((labels[n] == c).sum())) for n in range(2)) for c in range(3)]
    filled = mem.queue.entries[mem.queue.filled()]
    assert torch.allclose(filled.norm(dim=1), torch.ones(len(filled)))

    state = {k: v.clone() for k, v in mem.state_dict().items()}
    bigger = ContrastMemory(num_classes=5, size=6, dim=4, region=True)
    bigger.load_carried(state)  # the next step: 2 more classes
    for name in ("region", "pixel"):
        assert torch.equal(bigger.bank(name)[:3], mem.bank(name))
        assert bigger.count(name).tolist()[3:] == [0, 0]
        assert bigger.bank(name)[3:].abs().sum() == 0
    pixel_only = ContrastMemory(num_classes=3, size=6, dim=4, region=False)
    pixel_only.load_carried(state)  # the region bank is dropped
    assert pixel_only.bank_names == ("pixel",)
    assert torch.equal(pixel_only.bank("pixel"), mem.bank("pixel"))
    with pytest.raises(IfssError, match="6 slots of dimension 4 per class, this run 8"):
        ContrastMemory(num_classes=5, size=8, dim=4).load_carried(state)

    entries, classes, valid, by_class = bigger.candidates()
    assert entries.shape == (2 * 5 * 6, 4) and by_class.shape == (5, 12)
    assert (classes[by_class] == torch.arange(5).unsqueeze(1)).all()


def test_update_is_deterministic_under_the_torch_seed():
    feats, labels = torch.randn(2, 4, 5, 5), torch.randint(0, 3, (2, 5, 5))
    out = []
    for _ in range(2):
        torch.manual_seed(3)
        mem = ContrastMemory(3, 8, 4)
        mem.update(feats, labels, 2)
        out.append(mem.queue.storage.clone())
    assert torch.equal(*out)


def test_labels_at_feature_size():
    labels = torch.arange(16).view(1, 4, 4)
    assert labels_at(labels, (2, 2)).tolist() == [[[0, 2], [8, 10]]]
    assert labels_at(labels, (4, 4)) is labels
