"""Checksummed downloads and safe archive extraction, with the standard library only (urllib).

Both functions leave nothing behind that looks complete when they fail: a download streams into
`<dest>.part` and is renamed to `dest` only after its checksum matched; an archive is extracted
into a hidden temporary folder beside `dest` and renamed to `dest` only when every member is out.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import sys
import tarfile
from urllib.parse import urlsplit
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from ifss.errors import IfssError

__all__ = ["download_file", "file_hash", "safe_extract", "verify_file"]

_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # Python >= 3.11.4 / 3.10.12

CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "ifss-download/1 (+python-urllib)"


def _new_hash(algo: str):
    try:
        return hashlib.new(algo, usedforsecurity=False)
    except TypeError:  # a Python without the keyword
        return hashlib.new(algo)
    except ValueError as e:
        raise IfssError(f"Unknown hash algorithm {algo!r}; use one of md5, sha1, sha256.") from e


def file_hash(path: Path | str, algo: str = "sha256") -> str:
    """Hex digest of the file at `path` with hashlib algorithm `algo` (md5, sha256, ...)."""
    h = _new_hash(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected(md5: str | None, sha256: str | None, sha256_prefix: str | None) -> dict[str, str]:
    """The checks asked for, as {label: expected hex}; labels are 'md5', 'sha256', 'sha256_prefix'."""
    out = {}
    for label, value in (("md5", md5), ("sha256", sha256), ("sha256_prefix", sha256_prefix)):
        if value is not None:
            value = value.strip().lower()
            if not value or any(c not in "0123456789abcdef" for c in value):
                raise IfssError(f"The {label} checksum {value!r} is not a hex string; "
                                "pass the hex digest.")
            out[label] = value
    return out


def _mismatches(expected: dict[str, str], actual: dict[str, str]) -> list[tuple[str, str, str]]:
    """[(label, expected, actual)] for every check that failed; `actual` maps algo -> full hex."""
    bad = []
    for label, want in expected.items():
        if label == "sha256_prefix":
            got = actual["sha256"]
            if not got.startswith(want):
                bad.append(("sha256 prefix", want, got[: len(want)]))
        else:
            got = actual[label]
            if got != want:
                bad.append((label, want, got))
    return bad


def _algos(expected: dict[str, str]) -> set[str]:
    return {"sha256" if label == "sha256_prefix" else label for label in expected}


def verify_file(path: Path | str, md5: str | None = None, sha256: str | None = None,
                sha256_prefix: str | None = None) -> bool:
    """True when the file exists and matches every checksum given (no checksum: exists)."""
    path = Path(path)
    if not path.is_file():
        return False
    expected = _expected(md5, sha256, sha256_prefix)
    if not expected:
        return True
    hashes = {a: _new_hash(a) for a in _algos(expected)}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            for h in hashes.values():
                h.update(chunk)
    return not _mismatches(expected, {a: h.hexdigest() for a, h in hashes.items()})


def _progress(total: int | None, initial: int, name: str):
    """A tqdm bar on a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name)


def _open(url: str, start: int):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()  # it holds the open response
        if start and e.code == 416:  # the .part is not a prefix the server knows: start over
            return None
        raise IfssError(f"Could not download {url}: HTTP {e.code} {e.reason}; check the URL "
                        "(or the mirror) and that the file is published there.") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise IfssError(f"Could not download {url}: {reason}; check the URL (or the mirror) "
                        "and your network connection, then retry.") from e


def _resumed_offset(resp, start: int) -> int:
    """Where the response body starts in the file: `start` for a matching 206, else 0."""
    if not start or getattr(resp, "status", 200) != 206:
        return 0
    content_range = resp.headers.get("Content-Range", "")
    try:  # "bytes 100-199/200"
        first = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return 0
    return start if first == start else 0


def download_file(url: str, dest: Path | str, md5: str | None = None, sha256: str | None = None,
                  sha256_prefix: str | None = None) -> Path:
    """Download `url` to `dest`, checking every checksum given, and return `dest`.

    The body streams into `<dest>.part` (same folder) and is hashed on the way; only a download
    whose checksums match is renamed to `dest`. A mismatch removes the partial file and raises
    IfssError with the expected and actual hashes. If `dest` already exists and matches, nothing
    is downloaded; an existing `dest` that does not match is removed first. With no checksum,
    an existing `dest` counts as complete (it can only come from an earlier finished download).
    An interrupted download leaves `<dest>.part`; the next call resumes it with an HTTP Range
    request when the server supports one, and starts over otherwise.
    """
    dest = Path(dest)
    expected = _expected(md5, sha256, sha256_prefix)
    if dest.exists():
        if verify_file(dest, md5, sha256, sha256_prefix):
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0

    resp = _open(url, start)
    if resp is None:
        start = 0
        resp = _open(url, 0)
    hashes = {a: _new_hash(a) for a in _algos(expected)}
    with resp:
        offset = _resumed_offset(resp, start)
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if offset:  # hash the bytes already on disk first
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    for h in hashes.values():
                        h.update(chunk)
        bar = _progress(total, offset, dest.name)
        done = offset
        try:
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, ValueError, http.client.HTTPException) as e:
                        # connection reset, timeout, body shorter than announced
                        raise IfssError(f"The download of {url} broke off after {done} bytes ({e}); "
                                        f"run again to resume from {part}.") from e
                    if not chunk:
                        break
                    f.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done != total:
        raise IfssError(f"The download of {url} ended after {done} of {total} bytes; "
                        f"run again to resume from {part}.")

    actual = {a: h.hexdigest() for a, h in hashes.items()}
    bad = _mismatches(expected, actual)
    if bad:
        part.unlink(missing_ok=True)
        detail = "; ".join(f"expected {label} {want}, got {got}" for label, want, got in bad)
        raise IfssError(f"Checksum mismatch for {dest.name} downloaded from {url} ({detail}); the "
                        "partial file was removed: retry, and if it persists check the URL, the "
                        "mirror or the published checksum.")
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# archives


def _member_target(archive: Path, name: str) -> PurePosixPath:
    """The member's path relative to the extraction root, or IfssError if it escapes the root."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise IfssError(f"Refusing to extract {archive}: member {name!r} has an absolute path; "
                        "the archive is unsafe, download it again from a trusted source.")
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise IfssError(f"Refusing to extract {archive}: member {name!r} would land outside the "
                        "destination folder; the archive is unsafe, download it again from a "
                        "trusted source.")
    return PurePosixPath(norm)


def _check_link(archive: Path, name: str, target: str, base: PurePosixPath) -> None:
    """Refuse a link whose target (relative to `base`, a folder inside the root) leaves the root."""
    if not target or target.startswith(("/", "\\")):
        raise IfssError(f"Refusing to extract {archive}: link {name!r} points to the absolute "
                        f"path {target!r}; the archive is unsafe, download it again from a "
                        "trusted source.")
    joined = posixpath.normpath(posixpath.join(str(base), target.replace("\\", "/")))
    if joined == ".." or joined.startswith("../"):
        raise IfssError(f"Refusing to extract {archive}: link {name!r} points outside the "
                        f"destination folder ({target!r}); the archive is unsafe, download it "
                        "again from a trusted source.")


def _check_no_link_parents(archive: Path, paths: list[tuple[str, PurePosixPath]],
                           links: set[PurePosixPath]) -> None:
    """Refuse members stored beneath a link member (a path that would be resolved through it)."""
    for name, p in paths:
        for parent in p.parents:
            if parent in links:
                raise IfssError(f"Refusing to extract {archive}: member {name!r} lies beneath "
                                f"the link {str(parent)!r}; the archive is unsafe, download it "
                                "again from a trusted source.")


def _check_tar(archive: Path, members: list[tarfile.TarInfo]) -> None:
    paths, links = [], set()
    for m in members:
        p = _member_target(archive, m.name)
        paths.append((m.name, p))
        if m.issym():
            _check_link(archive, m.name, m.linkname, p.parent)
            links.add(p)
        elif m.islnk():  # hard link targets are relative to the archive root
            _check_link(archive, m.name, m.linkname, PurePosixPath("."))
        elif not (m.isfile() or m.isdir()):
            raise IfssError(f"Refusing to extract {archive}: member {m.name!r} is a device or "
                            "fifo; the archive is unsafe, download it again from a trusted source.")
    _check_no_link_parents(archive, paths, links)


def _check_zip(archive: Path, infos: list[zipfile.ZipInfo]) -> None:
    # zipfile writes symlink members as small regular files, so only the names need checking.
    for info in infos:
        _member_target(archive, info.filename)


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    raise IfssError(f"Cannot extract {archive}: unknown archive type; expected .tar, .tar.gz, "
                    ".tgz or .zip.")


def safe_extract(archive: Path | str, dest: Path | str) -> None:
    """Extract a .tar/.tar.gz/.tgz/.zip archive into the folder `dest`, safely and atomically.

    Every member is checked before anything is written: absolute paths, `..` that climbs out of
    `dest`, symlinks or hard links pointing outside `dest`, members stored beneath a link, and
    device files are refused with IfssError naming the archive and the member. Tar members are
    also extracted with the standard-library "data" filter where Python has it. Extraction goes
    into a hidden temporary folder beside `dest`, renamed to `dest` only when complete, so `dest`
    either does not exist or holds the whole archive. `dest` must not exist yet (or be empty).
    """
    archive, dest = Path(archive), Path(dest)
    kind = _archive_kind(archive)
    if not archive.is_file():
        raise IfssError(f"Cannot extract {archive}: the file does not exist; download it first.")
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise IfssError(f"Cannot extract {archive} into {dest}: the destination already exists; "
                        "remove it to extract again.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{dest.name}.extract-"
    for stale in dest.parent.glob(prefix + "*"):  # left by a killed earlier extraction
        shutil.rmtree(stale, ignore_errors=True)
    tmp = dest.parent / f"{prefix}{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()  # not mkdtemp: that one is 0700, and the folder becomes `dest`
    try:
        if kind == "zip":
            try:
                with zipfile.ZipFile(archive) as zf:
                    infos = zf.infolist()
                    _check_zip(archive, infos)
                    zf.extractall(tmp)
            except (zipfile.BadZipFile, EOFError) as e:
                raise IfssError(f"Cannot extract {archive}: it is not a valid zip file ({e}); "
                                "delete it and download it again.") from e
        else:
            try:
                with tarfile.open(archive) as tf:
                    members = tf.getmembers()
                    _check_tar(archive, members)
                    if hasattr(tarfile, "data_filter"):
                        tf.extractall(tmp, members=members, filter="data")
                    else:  # Python < 3.11.4 / 3.10.12: our own checks above are the guard
                        tf.extractall(tmp, members=members)
            except _TAR_FILTER_ERROR as e:
                member = getattr(getattr(e, "tarinfo", None), "name", "?")
                raise IfssError(f"Refusing to extract {archive}: member {member!r} was rejected "
                                f"by the tar data filter ({e}); the archive is unsafe, download "
                                "it again from a trusted source.") from e
            except (tarfile.TarError, EOFError, OSError) as e:
                raise IfssError(f"Cannot extract {archive}: it is not a valid tar archive ({e}); "
                                "delete it and download it again.") from e
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def mirrored_url(url: str, mirror: str | None) -> str:
    """`url` with its scheme and host replaced by `mirror` (which may add a path prefix): for
    tests and for users with a local mirror or cache."""
    if not mirror:
        return url
    if urlsplit(mirror).scheme not in ("http", "https", "ftp", "file"):
        raise IfssError(f"The mirror {mirror!r} is not a URL; give one like "
                        "http://host[:port][/prefix] or file:///path/to/mirror.")
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
