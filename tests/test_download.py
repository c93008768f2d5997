"""ifss.download against a local HTTP server on 127.0.0.1 serving files the tests make."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest

from ifss.download import download_file, file_hash, safe_extract, verify_file
from ifss.errors import IfssError


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# download_file


def test_download_with_md5_and_sha256(server, tmp_path):
    www, base, _ = server
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    (www / "blob.bin").write_bytes(data)
    dest = tmp_path / "out" / "blob.bin"
    sha = hashlib.sha256(data).hexdigest()
    got = download_file(f"{base}/blob.bin", dest, md5=_md5(data), sha256=sha, sha256_prefix=sha[:10])
    assert got == dest and dest.read_bytes() == data
    assert not dest.with_name("blob.bin.part").exists()
    assert file_hash(dest, "md5") == _md5(data) and file_hash(dest) == sha
    assert verify_file(dest, md5=_md5(data)) and not verify_file(dest, md5="0" * 32)


def test_existing_matching_file_is_not_downloaded_again(server, tmp_path):
    www, base, httpd = server
    (www / "a.txt").write_bytes(b"hello")
    dest = tmp_path / "a.txt"
    download_file(f"{base}/a.txt", dest, md5=_md5(b"hello"))
    n = len(httpd.requests)
    download_file(f"{base}/a.txt", dest, md5=_md5(b"hello"))
    assert len(httpd.requests) == n


def test_existing_mismatching_file_is_replaced(server, tmp_path):
    www, base, _ = server
    (www / "a.txt").write_bytes(b"hello")
    dest = tmp_path / "a.txt"
    dest.write_bytes(b"stale")
    download_file(f"{base}/a.txt", dest, md5=_md5(b"hello"))
    assert dest.read_bytes() == b"hello"


def test_checksum_mismatch_names_both_hashes_and_leaves_nothing(server, tmp_path):
    www, base, _ = server
    (www / "a.txt").write_bytes(b"hello")
    dest = tmp_path / "a.txt"
    wrong = "0123456789abcdef0123456789abcdef"
    with pytest.raises(IfssError) as e:
        download_file(f"{base}/a.txt", dest, md5=wrong)
    msg = str(e.value)
    assert "a.txt" in msg and wrong in msg and _md5(b"hello") in msg
    assert not dest.exists()
    assert list(tmp_path.glob("a.txt*")) == []


def test_sha256_prefix_mismatch(server, tmp_path):
    www, base, _ = server
    (www / "a.txt").write_bytes(b"hello")
    with pytest.raises(IfssError, match="sha256 prefix"):
        download_file(f"{base}/a.txt", tmp_path / "a.txt", sha256_prefix="ffff0000")
    assert not (tmp_path / "a.txt").exists()


def test_404_names_the_url(server, tmp_path):
    _, base, _ = server
    url = f"{base}/missing/file.zip"
    with pytest.raises(IfssError) as e:
        download_file(url, tmp_path / "file.zip")
    assert url in str(e.value) and "404" in str(e.value)
    assert not (tmp_path / "file.zip").exists()


def test_unreachable_host_names_the_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar"
    with pytest.raises(IfssError) as e:
        download_file(url, tmp_path / "x.tar")
    assert url in str(e.value)


def test_bad_checksum_argument():
    with pytest.raises(IfssError, match="md5"):
        download_file("http://127.0.0.1:1/x", "/nonexistent/x", md5="not-hex")


def test_resume_with_range(server, tmp_path):
    www, base, httpd = server
    data = os.urandom(200_000)
    (www / "big.bin").write_bytes(data)
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(data[:123_456])
    download_file(f"{base}/big.bin", dest, md5=_md5(data))
    assert dest.read_bytes() == data
    assert httpd.requests[-1] == ("/big.bin", "bytes=123456-")


def test_resume_falls_back_when_server_ignores_range(server, tmp_path):
    www, base, httpd = server
    httpd.ranges = False
    data = os.urandom(50_000)
    (www / "big.bin").write_bytes(data)
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(b"garbage" * 100)
    download_file(f"{base}/big.bin", dest, md5=_md5(data))
    assert dest.read_bytes() == data


def test_resume_restarts_when_part_is_longer_than_the_file(server, tmp_path):
    www, base, httpd = server
    data = os.urandom(1000)
    (www / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(os.urandom(5000))  # server answers 416
    download_file(f"{base}/f.bin", dest, md5=_md5(data))
    assert dest.read_bytes() == data
    assert [r for _, r in httpd.requests] == ["bytes=5000-", None]


# ---------------------------------------------------------------------------------------------
# safe_extract


def _tar(path: Path, members: list[tuple[str, str, bytes | str]], mode: str = "w") -> Path:
    """members: (kind, name, payload) with kind file (bytes), dir, sym / hard (link target)."""
    with tarfile.open(path, mode) as tf:
        for kind, name, payload in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
                continue
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, payload
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, payload
            tf.addfile(ti)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_good_tar_extracts(tmp_path, suffix, mode):
    archive = _tar(tmp_path / f"good{suffix}", [
        ("dir", "top", b""), ("file", "top/a.txt", b"A"), ("file", "top/sub/b.txt", b"B"),
        ("sym", "top/link", "sub/b.txt"), ("hard", "top/hard", "top/a.txt")], mode)
    dest = tmp_path / "out"
    safe_extract(archive, dest)
    assert (dest / "top/a.txt").read_bytes() == b"A"
    assert (dest / "top/sub/b.txt").read_bytes() == b"B"
    assert (dest / "top/link").read_bytes() == b"B" and (dest / "top/link").is_symlink()
    assert (dest / "top/hard").read_bytes() == b"A"
    assert _leftovers(tmp_path) == []


def test_good_zip_extracts(tmp_path):
    archive = _zip(tmp_path / "good.zip", {"list/train_aug.txt": b"x\n", "list/val.txt": b"y\n"})
    dest = tmp_path / "raw" / "list"
    safe_extract(archive, dest)
    assert (dest / "list/train_aug.txt").read_bytes() == b"x\n"
    assert _leftovers(dest.parent) == []


BAD_TARS = {
    "dotdot": [("file", "ok.txt", b"ok"), ("file", "../evil", b"evil")],
    "nested-dotdot": [("file", "a/../../evil", b"evil")],
    "absolute": [("file", "ok.txt", b"ok"), ("file", "/tmp/ifss-test-evil", b"evil")],
    "symlink-out": [("sym", "link", "../../outside")],
    "symlink-absolute": [("sym", "link", "/etc")],
    "through-symlink": [("sym", "link", "sub"), ("file", "link/x", b"x")],
    "hardlink-out": [("hard", "h", "../outside")],
}


@pytest.mark.parametrize("case", sorted(BAD_TARS))
def test_unsafe_tar_is_refused_and_nothing_extracted(tmp_path, case):
    archive = _tar(tmp_path / "bad.tar", BAD_TARS[case])
    dest = tmp_path / "x" / "out"
    with pytest.raises(IfssError) as e:
        safe_extract(archive, dest)
    msg = str(e.value)
    assert "bad.tar" in msg
    bad_member = [name for _, name, _ in BAD_TARS[case]][-1]
    assert repr(bad_member) in msg
    assert not dest.exists()
    assert _leftovers(dest.parent) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "x" / "evil").exists()
    assert not Path("/tmp/ifss-test-evil").exists()


@pytest.mark.parametrize("name", ["../evil", "/tmp/ifss-test-evil", "a/../../evil"])
def test_unsafe_zip_is_refused(tmp_path, name):
    archive = _zip(tmp_path / "bad.zip", {"ok.txt": b"ok", name: b"evil"})
    dest = tmp_path / "x" / "out"
    with pytest.raises(IfssError) as e:
        safe_extract(archive, dest)
    assert "bad.zip" in str(e.value) and repr(name) in str(e.value)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_existing_destination_is_refused(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"f": b"1"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(IfssError, match="already exists"):
        safe_extract(archive, dest)
    assert (dest / "keep").read_text() == "mine"


def test_corrupt_and_unknown_archives(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(IfssError, match="broken.zip"):
        safe_extract(tmp_path / "broken.zip", tmp_path / "o1")
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(IfssError, match="broken.tar.gz"):
        safe_extract(tmp_path / "broken.tar.gz", tmp_path / "o2")
    (tmp_path / "file.rar").write_bytes(b"?")
    with pytest.raises(IfssError, match="unknown archive type"):
        safe_extract(tmp_path / "file.rar", tmp_path / "o3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
