"""`include: [file, ...]`: config files merged under the config that names them.

Paths are relative to the workflow's folder (the checkout), so a paper config can share its
`methods` block with the others (config/papers/pifs_methods.yaml). The including config wins
on conflicts, a later include wins over an earlier one, and included files may include others.
"""
from __future__ import annotations

from pathlib import Path

from ifss.config import load_yaml, merge
from ifss.errors import IfssError


def include_paths(cfg: dict, where: str = "include") -> list[str]:
    names = cfg.get("include") or []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise IfssError(f"{where} must be a list of config files, got {names!r}")
    return names


def expand_includes(cfg: dict, base_dir: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """`cfg` with its included files merged under it (a new dict; `include` itself is kept)."""
    merged: dict = {}
    where = f"include of {_chain[-1]}" if _chain else "include"
    for name in include_paths(cfg, where):
        path = (Path(base_dir) / name).resolve()
        if path in _chain:
            raise IfssError(f"{where}: {name} includes itself (through "
                            f"{' -> '.join(p.name for p in (*_chain, path))})")
        included = expand_includes(load_yaml(path), base_dir, (*_chain, path))
        included.pop("include", None)
        merged = merge(merged, included)
    return merge(merged, cfg)
