"""SPN: the fixed embedding classifier, the class vectors (synthetic attributes; fastText +
word2vec fetched from a local HTTP server), and a synthetic step 0 -> step 1 chain."""
import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import json
import shutil
import threading
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from ifss.cli import main
from ifss.config import ModelConfig, build_config
from ifss.data import embeddings
from ifss.data.embeddings import (class_words, fetch_word_vectors, load_class_vectors,
                                  read_fasttext_vectors, read_word2vec_vectors)
from ifss.data.prepare import UnverifiedDownloadWarning
from ifss.errors import IfssError
from ifss.models import EmbeddingClassifier, build_model
from ifss.run import train_run

# ------------------------------------------------------------------------------ the classifier


def test_embedding_classifier_is_fixed_and_computes_dot_products():
    torch.manual_seed(0)
    cls = EmbeddingClassifier(4, [2, 1])
    assert list(cls.parameters()) == []
    vectors = torch.tensor([[3.0, 0, 0, 4], [0, 1, 0, 0], [1, 1, 1, 1]])
    cls.set_embeddings(0, vectors[:2])
    cls.set_embeddings(1, vectors[2:])
    unit = vectors / vectors.norm(dim=1, keepdim=True)
    assert torch.allclose(cls.embeddings, unit)
    x = torch.randn(2, 4, 3, 5)  # features are NOT normalised
    expected = torch.einsum("nchw,kc->nkhw", x, unit)
    assert torch.allclose(cls(x), expected, atol=1e-6)
    assert torch.allclose(cls.step_logits(1, x), expected[:, 2:], atol=1e-6)
    assert set(cls.state_dict()) == {"convs.0.weight", "convs.1.weight"}  # saved with the model
    with pytest.raises(IfssError, match="do not fit"):
        cls.set_embeddings(1, vectors[:2])


def test_build_model_with_embedding_classifier():
    cfg = ModelConfig(head_channels=8, pooling_size=2)
    model = build_model(cfg, [3, 2], classifier="embedding", embedding_dim=5)
    assert model.head.out_channels == 5 and model.head.map_bn.num_features == 4 * 8
    assert model.param_groups()["classifier"] == []
    out = model(torch.randn(2, 3, 32, 32))
    assert out["features"].shape[1] == 5 and out["logits"].shape[1] == 5
    with pytest.raises(IfssError, match="embedding_dim"):
        build_model(cfg, [3], classifier="embedding")


# ------------------------------------------------------------------------------ class vectors


def test_zero_background_row_gets_its_own_dimension(tmp_path):
    attributes = np.array([[0, 0, 0], [1, 0, 0.5], [0, 1, 0.2]], np.float32)
    np.save(tmp_path / "a.npy", attributes)
    got = load_class_vectors(tmp_path / "a.npy")
    np.testing.assert_array_equal(got, np.array([[0, 0, 0, 1], [1, 0, 0.5, 0], [0, 1, 0.2, 0]],
                                                np.float32))
    attributes[0] = 0.3  # a real background vector stays as it is
    np.save(tmp_path / "b.npy", attributes)
    np.testing.assert_array_equal(load_class_vectors(tmp_path / "b.npy"), attributes)
    with pytest.raises(IfssError, match="c.npy do not exist"):
        load_class_vectors(tmp_path / "c.npy")


def test_synthetic_attributes_are_the_default(synth_root):
    from ifss.data.synthetic import attribute_names

    vectors = load_class_vectors(embeddings.default_vectors_path("synthetic", synth_root))
    assert vectors.shape == (21, len(attribute_names()) + 1)


# fake vector files: every word the VOC and COCO names need, plus one the tests leave out
WORDS = sorted({w for space in ("voc", "coco") for ws in class_words(space) if ws for w in ws})


def word_vector(word: str, dim: int, salt: str) -> np.ndarray:
    seed = int(hashlib.md5((salt + word).encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def fasttext_zip(words, dim=3) -> bytes:
    lines = [f"{len(words) + 1} {dim}", "the " + " ".join(["0.5"] * dim)]
    lines += [w + " " + " ".join(f"{v:.6f}" for v in word_vector(w, dim, "ft")) for w in words]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("crawl-300d-2M.vec", "\n".join(lines) + "\n")
    return buf.getvalue()


def word2vec_gz(words, dim=2) -> bytes:
    body = io.BytesIO()
    body.write(f"{len(words)} {dim}\n".encode())
    for w in words:
        spelled = "TV" if w == "tv" else w  # only the upper-case spelling in this file
        body.write(spelled.encode() + b" " + word_vector(w, dim, "w2v").tobytes() + b"\n")
    return gzip.compress(body.getvalue())


def mean_unit(words, dim, salt):
    mean = np.mean([np.round(word_vector(w, dim, salt), 6) for w in words], axis=0)
    return mean / np.linalg.norm(mean)


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL, list of request paths)."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def publish(www, monkeypatch, words=WORDS, md5=None):
    """Serve the fake files at the real URLs' paths; word2vec's checksum becomes the fake's."""
    from urllib.parse import urlsplit

    blobs = {"crawl": fasttext_zip(words), "word2vec": word2vec_gz(words)}
    for key, blob in blobs.items():
        path = www / urlsplit(embeddings.WORD_VECTOR_SOURCES[key].url).path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    source = embeddings.WORD_VECTOR_SOURCES["word2vec"]
    monkeypatch.setitem(embeddings.WORD_VECTOR_SOURCES, "word2vec", dataclasses.replace(
        source, md5=md5 or hashlib.md5(blobs["word2vec"]).hexdigest()))


def test_fetch_word_vectors_over_http(server, tmp_path, monkeypatch):
    www, base, requests = server
    publish(www, monkeypatch)
    out = tmp_path / "vectors"
    with pytest.warns(UnverifiedDownloadWarning, match="crawl-300d-2M.vec.zip"):
        paths = fetch_word_vectors(out, mirror=base)
    voc, coco = np.load(paths["voc"]), np.load(paths["coco"])
    assert voc.shape == (21, 3 + 2) and coco.shape == (91, 3 + 2)
    # "diningtable" (id 11) = mean of "dining" and "table", each half L2-normalised
    expected = np.concatenate([mean_unit(["dining", "table"], 3, "ft"),
                               mean_unit(["dining", "table"], 2, "w2v")])
    np.testing.assert_allclose(voc[11], expected, rtol=1e-5)
    # "tvmonitor": word2vec only has "TV"; the case variant is used
    np.testing.assert_allclose(voc[20][3:], mean_unit(["tv", "monitor"], 2, "w2v"), rtol=1e-5)
    assert not coco[12].any() and coco[1].any()  # unused COCO id 12; person
    info = json.loads(paths["voc"].with_suffix(".json").read_text())
    assert info["names"][11] == "diningtable" and info["words"][11] == ["dining", "table"]
    assert {v["verified"] for v in info["sources"].values()} == {True, False}
    count = len(requests)
    assert fetch_word_vectors(out, mirror=base) == paths and len(requests) == count


def test_fetch_word_vectors_checksum_mismatch(server, tmp_path, monkeypatch):
    www, base, _ = server
    publish(www, monkeypatch, md5="0" * 32)
    with pytest.warns(UnverifiedDownloadWarning), pytest.raises(IfssError, match="Checksum"):
        fetch_word_vectors(tmp_path / "v", ["voc"], mirror=base)
    assert not list((tmp_path / "v").glob("word_vectors_*"))


def test_missing_word_is_named(server, tmp_path, monkeypatch):
    www, base, _ = server
    publish(www, monkeypatch, words=[w for w in WORDS if w != "sheep"])
    with pytest.warns(UnverifiedDownloadWarning), pytest.raises(IfssError, match="'sheep'"):
        fetch_word_vectors(tmp_path / "v", ["voc"], mirror=base)


def test_readers_take_plain_files(tmp_path):
    (tmp_path / "v.zip").write_bytes(fasttext_zip(["cat", "dog"]))
    with zipfile.ZipFile(tmp_path / "v.zip") as zf:
        (tmp_path / "v.vec").write_bytes(zf.read("crawl-300d-2M.vec"))
    (tmp_path / "w.bin").write_bytes(gzip.decompress(word2vec_gz(["cat", "tv"])))
    got = read_fasttext_vectors(tmp_path / "v.vec", ["dog", "Cat", "cow"])
    assert set(got) == {"dog", "Cat"}  # "Cat" found as "cat"; "cow" is absent
    np.testing.assert_allclose(got["dog"], word_vector("dog", 3, "ft"), atol=1e-6)
    got = read_word2vec_vectors(tmp_path / "w.bin", ["tv", "cat"])
    np.testing.assert_array_equal(got["tv"], word_vector("tv", 2, "w2v"))
    with pytest.raises(IfssError, match="not a word2vec"):
        read_word2vec_vectors(tmp_path / "v.zip", ["cat"])


# ------------------------------------------------------------------------------ SPN runs


def test_spn_chain(synth_root, tmp_path):
    vectors = tmp_path / "attributes.npy"
    shutil.copy(synth_root / "class_attributes.npy", vectors)
    over = {"params.vectors": str(vectors)}
    s0 = train_run(build_config(None, tiny_overrides(synth_root, method="SPN", **over)),
                   tmp_path / "s0")
    train_run(build_config(None, tiny_overrides(
        synth_root, method="SPN", step=1, nshot=1, previous=str(tmp_path / "s0" / "model.pt"),
        **over)), tmp_path / "s1")
    m = json.loads((tmp_path / "s1" / "metrics.json").read_text())
    assert m["base_method"] == "SPN" and m["miou_novel"] is not None
    assert m["config"]["params"] == {"vectors": str(vectors)}
    state = torch.load(tmp_path / "s1" / "model.pt", weights_only=True)["model"]
    table = torch.from_numpy(load_class_vectors(vectors))
    base = [0] + list(range(6, 21))  # task 5-0: novel classes 1..5
    assert torch.allclose(state["classifier.convs.0.weight"], F.normalize(table[base], dim=1))
    assert torch.allclose(state["classifier.convs.1.weight"], F.normalize(table[1:6], dim=1))
    assert state["head.red_conv.weight"].shape[0] == table.shape[1]
    # evaluation reads the class vectors from model.pt, not from the file
    vectors.unlink()
    assert main(["eval", "--checkpoint", str(tmp_path / "s0" / "model.pt"),
                 "--out", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["iou"] == pytest.approx(s0["iou"])
