"""Class vectors for SPN's fixed embedding classifier.

    load_class_vectors(path)            (num_ids x D) float32 rows, indexed by original class id
    default_vectors_path(dataset, root) where a run looks when `params.vectors` is empty
    fetch_word_vectors(out, ...)        real datasets: fastText + word2vec -> out/word_vectors_*.npy

Synthetic benchmark: the generator's attribute vectors (`<root>/class_attributes.npy`, one-hot
shape, colour and texture plus the colour's RGB). Their background row is zero; a zero class
vector would pin background's logit at 0 everywhere, so `load_class_vectors` gives a zero
background row its own dimension instead (one extra column, 1 for background, 0 for every class):
background becomes a fixed unit vector orthogonal to every object class, as the word
"background" has its own vector in SPNet.

Real datasets (SPNet's "fastnvec"): for each class, the fastText vector ⊕ the word2vec vector
(300 + 300 = 600 dimensions). A class name of several words (VOC "diningtable" = dining table,
COCO "traffic light") gets the mean of its words' vectors. Each of the two halves is
L2-normalised before the concatenation so that neither vocabulary dominates (the classifier
normalises the 600-d row again). Files written by `fetch_word_vectors`:

    out/word_vectors_{voc,coco}.npy    (num_ids x 600) float32; row = original class id (VOC 0..20,
                                       COCO 0..90; unused COCO ids are zero rows)
    out/word_vectors_{voc,coco}.json   class names, the words used, sources and checksums
"""
from __future__ import annotations

import gzip
import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ifss import atomic
from ifss.data.prepare import UnverifiedDownloadWarning
from ifss.download import download_file, file_hash, mirrored_url
from ifss.errors import IfssError
from ifss.data.records import get_dataset

__all__ = [
    "WORD_VECTOR_SOURCES", "UnverifiedDownloadWarning", "class_words", "default_vectors_path",
    "fetch_word_vectors", "load_class_vectors", "read_fasttext_vectors", "read_word2vec_vectors",
    "word_vector_matrix",
]



# ---------------------------------------------------------------------------------------------
# where the vectors come from


@dataclass(frozen=True)
class WordVectorFile:
    name: str  # file name under the downloads folder
    url: str
    md5: str | None  # as published; None = no published checksum found (warned on download)
    kind: str  # fasttext (.vec text in a zip) | word2vec (binary, gzipped)
    md5_source: str = ""
    note: str = ""


WORD_VECTOR_SOURCES: dict[str, WordVectorFile] = {
    "crawl": WordVectorFile(
        name="crawl-300d-2M.vec.zip",
        url="https://dl.fbaipublicfiles.com/fasttext/vectors-english/crawl-300d-2M.vec.zip",
        md5=None,  # fasttext.cc/docs/en/english-vectors publishes no checksum
        kind="fasttext",
        note="fastText English vectors, 2M words, Common Crawl (600B tokens)",
    ),
    "wiki-news": WordVectorFile(
        name="wiki-news-300d-1M.vec.zip",
        url="https://dl.fbaipublicfiles.com/fasttext/vectors-english/wiki-news-300d-1M.vec.zip",
        md5=None,  # fasttext.cc/docs/en/english-vectors publishes no checksum
        kind="fasttext",
        note="fastText English vectors, 1M words, Wikipedia 2017 + UMBC + statmt news (16B tokens)",
    ),
    "word2vec": WordVectorFile(
        name="word2vec-google-news-300.gz",
        url="https://github.com/RaRe-Technologies/gensim-data/releases/download/"
            "word2vec-google-news-300/word2vec-google-news-300.gz",
        md5="a5e5354d40acb95f9ec66d5977d140ef",
        kind="word2vec",
        md5_source="gensim-data list.json, entry word2vec-google-news-300 (as printed by "
                   "gensim.downloader.info() in the gensim documentation; file_size 1743563840)",
        note="Google's GoogleNews-vectors-negative300 (3M words and phrases, word2vec binary "
             "format), gzipped; the original is only on Google Drive (code.google.com/archive/p/"
             "word2vec), which plain HTTP cannot fetch",
    ),
}
FASTTEXT_VARIANTS = ("crawl", "wiki-news")

# Class names of the label spaces as words: VOC writes some compounds as one token.
_VOC_WORDS = {"diningtable": "dining table", "pottedplant": "potted plant",
              "tvmonitor": "tv monitor"}


def class_words(label_space: str) -> list[list[str] | None]:
    """Per original class id, the words whose vectors are averaged (None for an unused id):
    the dataset record's class names (VOC's run-together names split into words)."""
    names = get_dataset(label_space).classes
    return [None if n is None else _VOC_WORDS.get(n, n).split() for n in names]


def default_vectors_path(dataset: str, root: str | Path) -> Path:
    """Synthetic: the generator's attribute file; voc/coco: what `fetch_word_vectors` writes."""
    root = Path(root)
    if dataset == "synthetic":
        return root / "class_attributes.npy"
    return root / f"word_vectors_{get_dataset(dataset).label_space}.npy"


def load_class_vectors(path: str | Path) -> np.ndarray:
    """(num_ids x D) float32 class vectors from a .npy file, row = original class id.

    A zero background row (the synthetic attributes) gets an extra indicator dimension, so
    background has a vector of its own (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise IfssError(f"class vectors {path} do not exist; for the synthetic dataset run "
                        "`ifss synth`, for voc/coco fetch the word vectors "
                        "(ifss.data.embeddings.fetch_word_vectors), or set params.vectors=PATH")
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise IfssError(f"class vectors {path} cannot be read ({err}); write them again") from None
    if vectors.ndim != 2 or vectors.shape[0] < 2 or not np.isfinite(vectors).all():
        raise IfssError(f"class vectors {path} must be a finite (classes x dim) matrix, got shape "
                        f"{vectors.shape}; write them again")
    vectors = vectors.astype(np.float32)
    if not vectors[0].any():
        indicator = np.zeros((vectors.shape[0], 1), np.float32)
        indicator[0] = 1.0
        vectors = np.concatenate([vectors, indicator], axis=1)
    return vectors


# ---------------------------------------------------------------------------------------------
# reading the vector files (only the words asked for; both files are streamed, never loaded)


def _variants(word: str) -> list[str]:
    out = []
    for w in (word, word.lower(), word.capitalize(), word.upper()):
        if w not in out:
            out.append(w)
    return out


def _wanted(words: Iterable[str]) -> dict[str, str]:
    """spelling in the file -> the word asked for (exact spelling first)."""
    table: dict[str, str] = {}
    for word in words:
        for i, variant in enumerate(_variants(word)):
            if i == 0 or variant not in table:
                table[variant] = word
    return table


def _pick(found: dict[str, np.ndarray], words: Iterable[str]) -> dict[str, np.ndarray]:
    """For each word, the vector of its first spelling found (exact, lower, Capital, UPPER)."""
    out = {}
    for word in words:
        for variant in _variants(word):
            if variant in found:
                out[word] = found[variant]
                break
    return out


def _fasttext_lines(path: Path) -> Iterator[str]:
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [i for i in zf.infolist() if i.filename.endswith(".vec")]
                if len(members) != 1:
                    raise IfssError(f"{path} should hold one .vec file, found "
                                    f"{[i.filename for i in zf.infolist()]}")
                with zf.open(members[0]) as raw:
                    yield from io.TextIOWrapper(raw, encoding="utf-8", errors="replace",
                                                newline="\n")
        except zipfile.BadZipFile as err:
            raise IfssError(f"{path} is not a valid zip file ({err}); delete it and download "
                            "it again") from None
    else:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
            yield from f


def read_fasttext_vectors(path: str | Path, words: Iterable[str]) -> dict[str, np.ndarray]:
    """Vectors of `words` from a fastText .vec text file (or a .zip holding one): first line
    "count dim", then one "word v1 ... vdim" per line."""
    path, words = Path(path), list(words)
    wanted, exact = _wanted(words), set(words)
    found: dict[str, np.ndarray] = {}
    lines = _fasttext_lines(path)
    try:
        header = next(lines).split()
        dim = int(header[1])
    except (StopIteration, IndexError, ValueError):
        raise IfssError(f"{path} is not a fastText .vec file (no 'count dim' header)") from None
    for line in lines:
        word, _, rest = line.rstrip("\n").partition(" ")
        if word in wanted and word not in found:
            values = np.array(rest.split(), dtype=np.float32)
            if values.shape != (dim,):
                raise IfssError(f"{path}: the vector of {word!r} has {values.size} values, "
                                f"not {dim}; the file is damaged, download it again")
            found[word] = values
            exact.discard(word)
            if not exact:  # every word found as spelt: the rest of the file cannot matter
                break
    return _pick(found, words)


def _word2vec_records(stream, path: Path, dim: int, count: int) -> Iterator[tuple[bytes, bytes]]:
    """(word, raw float32 vector) pairs of a word2vec binary body, read in large chunks."""
    size = 4 * dim
    buf, pos = b"", 0
    for _ in range(count):
        while True:
            end = buf.find(b" ", pos)
            if end >= 0 and len(buf) - end - 1 >= size:
                break
            chunk = stream.read(1 << 22)
            if not chunk:
                raise IfssError(f"{path} ends early; the file is damaged, download it again")
            buf, pos = buf[pos:] + chunk, 0
        word = buf[pos:end].lstrip(b"\n")
        yield word, buf[end + 1:end + 1 + size]
        pos = end + 1 + size


def read_word2vec_vectors(path: str | Path, words: Iterable[str]) -> dict[str, np.ndarray]:
    """Vectors of `words` from a word2vec binary file (gzipped if it ends in .gz): a header
    line "count dim", then per word its UTF-8 bytes, a space and dim little-endian float32."""
    path, words = Path(path), list(words)
    wanted, exact = _wanted(words), set(words)
    found: dict[str, np.ndarray] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            try:
                count, dim = (int(v) for v in stream.readline().split())
            except ValueError:
                raise IfssError(f"{path} is not a word2vec binary file (no 'count dim' "
                                "header)") from None
            for raw, vector in _word2vec_records(stream, path, dim, count):
                word = raw.decode("utf-8", errors="replace")
                if word in wanted and word not in found:
                    found[word] = np.frombuffer(vector, dtype="<f4").astype(np.float32)
                    exact.discard(word)
                    if not exact:
                        break
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise IfssError(f"{path} cannot be read ({err}); delete it and download it "
                        "again") from None
    return _pick(found, words)


def _class_matrix(names: list[list[str] | None], table: dict[str, np.ndarray], source: Path,
                  dim: int) -> np.ndarray:
    """Mean word vector per class, L2-normalised; zero rows for unused ids."""
    out = np.zeros((len(names), dim), np.float32)
    missing = sorted({w for ws in names if ws for w in ws if w not in table})
    if missing:
        raise IfssError(f"{source} has no vector for {', '.join(map(repr, missing))}; use "
                        "another vector file or give those classes other words")
    for i, ws in enumerate(names):
        if ws:
            mean = np.mean([table[w] for w in ws], axis=0)
            out[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return out


def word_vector_matrix(label_space: str, fasttext: str | Path, word2vec: str | Path
                       ) -> np.ndarray:
    """(num_ids x 600) fastText ⊕ word2vec class vectors of a label space (voc | coco)."""
    names = class_words(label_space)
    words = sorted({w for ws in names if ws for w in ws})
    halves = []
    for path, reader in ((Path(fasttext), read_fasttext_vectors),
                         (Path(word2vec), read_word2vec_vectors)):
        table = reader(path, words)
        dim = len(next(iter(table.values()))) if table else 0
        halves.append(_class_matrix(names, table, path, dim))
    return np.concatenate(halves, axis=1)


# ---------------------------------------------------------------------------------------------
# download + extraction


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _fetch(source: WordVectorFile, downloads: Path, mirror: str | None) -> tuple[Path, dict]:
    url = mirrored_url(source.url, mirror)
    path = download_file(url, downloads / source.name, md5=source.md5)
    if source.md5 is None:
        got = file_hash(path, "md5")
        warnings.warn(f"{path} (from {url}) has no published checksum, so it is unverified; "
                      f"its md5 is {got}: compare it with a copy you trust.",
                      UnverifiedDownloadWarning, stacklevel=3)
        return path, {"url": url, "md5": got, "verified": False}
    return path, {"url": url, "md5": source.md5, "verified": True,
                  "md5_source": source.md5_source}


def fetch_word_vectors(out: str | Path, label_spaces: Iterable[str] = ("voc", "coco"),
                       fasttext: str = "crawl", downloads: str | Path | None = None,
                       mirror: str | None = None) -> dict[str, Path]:
    """Download (checksummed) fastText and word2vec vectors and write, for each label space,
    `out/word_vectors_<space>.npy` (+ `.json`); returns {space: npy path}.

    `fasttext` picks the fastText file ("crawl": crawl-300d-2M, "wiki-news":
    wiki-news-300d-1M). Downloads go to `downloads` (default `out/downloads/`) and resume after an
    interruption; a file without a published checksum is used with an UnverifiedDownloadWarning
    that gives its md5. `mirror` replaces the scheme and host of every URL. Outputs that exist are
    kept, so a second call returns at once; every file is written atomically.
    """
    if fasttext not in FASTTEXT_VARIANTS:
        raise IfssError(f"unknown fastText vectors {fasttext!r}; valid values: "
                        f"{', '.join(FASTTEXT_VARIANTS)}")
    spaces = list(dict.fromkeys(label_spaces))
    for space in spaces:
        class_words(space)  # checks the name
    out = Path(out)
    downloads = Path(downloads) if downloads else out / "downloads"
    paths = {s: out / f"word_vectors_{s}.npy" for s in spaces}
    todo = [s for s in spaces if not (paths[s].is_file()
                                      and paths[s].with_suffix(".json").is_file())]
    if not todo:
        return paths
    files = {}
    for key in (fasttext, "word2vec"):
        files[key] = _fetch(WORD_VECTOR_SOURCES[key], downloads, mirror)
    for space in todo:
        matrix = word_vector_matrix(space, files[fasttext][0], files["word2vec"][0])
        _save_npy(paths[space], matrix)
        atomic.write_json(paths[space].with_suffix(".json"), {
            "label_space": space,
            "shape": list(matrix.shape),
            "rows": "original class id; fastText (300) then word2vec (300), each the mean of "
                    "the class's word vectors, L2-normalised; zero rows for unused ids",
            "names": [None if n is None else str(n) for n in get_dataset(space).classes],
            "words": class_words(space),
            "sources": {WORD_VECTOR_SOURCES[k].name: info for k, (_, info) in files.items()},
        })
    return paths
