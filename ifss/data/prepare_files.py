"""File helpers shared by the dataset preparers (`ifss.data.prepare`, `ifss.data.coco_labels`).

    find_folder(raw_dir, what, match)   the one folder of an extracted download that matches
    link_or_copy(src, dst)              put a raw file into the layout: hard link, symlink or copy
    write_text_atomic(path, text)       write under a temporary name, then rename
    write_lines(path, ids)              an id list, one a line, atomically
    progress(items, total, desc)        a tqdm bar on a terminal, else the items unchanged
    read_record(path)                   a JSON object written by a preparer, None if unreadable
    read_ids(path, fix)                 the image ids of a list file, in order, without repeats
    MARKER                              the name of `fetch_dataset`'s record of a dataset folder
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable

from ifss.errors import IfssError

MARKER = ".ifss-prepared.json"  # `fetch_dataset`'s record in a prepared dataset folder


def read_record(path: Path) -> dict | None:
    """The JSON object at `path` (a marker or label record), None when it is missing, unreadable
    or not an object: the caller then treats the folder as not prepared."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_ids(path: Path, fix: str = "extract it again") -> list[str]:
    """Image ids of a list file, in order, each once: one per line, either a bare id or
    '/JPEGImages/<id>.jpg ...' (VOC's lists); `fix` ends the error of an unreadable or empty
    list."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise IfssError(f"Cannot read the image list {path} ({e}); {fix}.") from e
    ids = [Path(line.split()[0]).stem for line in lines if line.split()]
    ids = [i for i in dict.fromkeys(ids) if i]
    if not ids:
        raise IfssError(f"The image list {path} is empty; {fix}.")
    return ids


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_lines(path: Path, ids: Iterable[str]) -> None:
    write_text_atomic(path, "".join(f"{i}\n" for i in ids))


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` the file `src`: a hard link, else a symlink (other file system), else a copy."""
    if dst.is_symlink() and not dst.exists():  # dangling: its target moved
        dst.unlink()
    if dst.exists():
        return
    try:
        os.link(src, dst)
        return
    except OSError as e:
        if e.errno == errno.EEXIST:
            return
        if e.errno == errno.ENOENT:
            raise IfssError(f"{src} is missing; extract its archive again (delete the folder "
                            "under raw/ that should hold it) and rerun.") from e
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        tmp = dst.with_name(dst.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def progress(items: Iterable, total: int, desc: str) -> Iterable:
    if not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, unit="img")


def find_folder(raw_dir: Path, what: str,
                match: Callable[[str, list[str], list[str]], bool]) -> Path:
    """The one folder under `raw_dir` for which match(name, subdirs, files) holds.

    Hidden folders (our temporary extraction folders) and macOS `__MACOSX` folders are skipped,
    and the walk does not descend into a match.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(raw_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        if match(os.path.basename(dirpath), dirnames, filenames):
            found.append(Path(dirpath))
            dirnames[:] = []
    if not found:
        raise IfssError(f"No {what} found under {raw_dir}; download and extract it there "
                        "(fetch_dataset does both).")
    if len(found) > 1:
        raise IfssError(f"Several {what} found under {raw_dir} ({', '.join(map(str, found))}); "
                        "keep only one of them.")
    return found[0]

