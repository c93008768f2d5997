"""Atomic file writes: a reader (or Snakemake) never sees a half-written file under the final name.
A folder written whole (`replace_dir`) is renamed into place the same way.

A write that the operating system refuses (disk full, read-only folder, a file where a folder
should be) leaves neither its temporary file nor anything under the final name, and becomes an
IfssError: one sentence naming the file and the fix.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from ifss.errors import IfssError

# errors that can only come from writing, whichever file the OS names (often none)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def os_error_message(err: OSError, path: str | Path | None = None,
                     action: str | None = None) -> str:
    """One sentence for an operating-system failure on `path` (default: the file `err` names);
    `action` defaults to "cannot write" for errors only writes have, else "cannot access"."""
    where = path if path is not None else (err.filename or "a file")
    reason = err.strerror or str(err)
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = ("free some space (or choose another --out) and rerun the same command; a training "
               "run resumes from its last resume.pt")
    elif code == errno.EROFS:
        fix = "choose an output folder on a writable file system (--out)"
    elif code in (errno.EACCES, errno.EPERM):
        fix = "make the folder writable for you or choose another output folder (--out)"
    elif code in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        fix = "a file or folder is in the way: move it or choose another output path (--out)"
    else:
        fix = "check the path and the disk, then rerun the same command"
    if action is None:
        action = "cannot write" if code in _WRITE_ERRNOS else "cannot access"
    return f"{action} {where}: {reason[:1].lower()}{reason[1:]}; {fix}"


def _ours(err: OSError, *paths: Path) -> bool:
    """Whether `err` is about writing one of `paths` (not a file the caller's block reads)."""
    return (err.errno in _WRITE_ERRNOS or err.filename is None
            or str(err.filename) in {str(p) for p in paths})


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    The temporary file is removed whatever happens; an OSError of the write is an IfssError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise IfssError(os_error_message(err, path, "cannot write")) from None
    try:
        yield Path(tmp)
        share(tmp)  # mkstemp makes 0600; outputs are shared files
        os.replace(tmp, path)
    except OSError as err:
        if not _ours(err, path, Path(tmp), path.parent):
            raise
        raise IfssError(os_error_message(err, path, "cannot write")) from None
    finally:
        with suppress(OSError):
            os.unlink(tmp)


def share(path: str | Path) -> None:
    """Give a temporary file (mkstemp: 0600) or folder (mkdtemp: 0700) the permissions a plain
    new one gets under the process's umask: outputs are shared."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)


def replace_dir(new: str | Path, out: str | Path) -> None:
    """Rename the complete folder `new` onto `out`; an earlier `out` goes only after (and comes
    back if the rename fails), so `out` is always the old complete folder or the new one."""
    new, out = Path(new), Path(out)
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old / out.name, out)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def torch_save(obj, path: str | Path) -> None:
    import torch

    # through a Python file: a full disk is then an OSError (ENOSPC), not torch's opaque
    # "unexpected pos" RuntimeError from its own writer
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:  # torch's writer fails again on closing the archive:
            cause = _os_error_within(err)  # the OSError of the write is the one to report
            if cause is None:
                raise
            raise cause from None


def _os_error_within(err: BaseException) -> OSError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
