"""Whether a saved state dict fits a module, said in one clause for an error message."""
from __future__ import annotations

from collections.abc import Callable, Mapping


def state_misfit(own: Mapping, state: Mapping, may_miss: Callable[[str], bool]) -> str:
    """'' when `state` fits `own` (keys and shapes; keys with may_miss(key) may be absent), else
    'missing keys a, b; unexpected keys c; k has shape (..), expected (..)'."""
    missing = [k for k in own if k not in state and not may_miss(k)]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    details = []
    if missing:
        details.append(f"missing keys {', '.join(missing[:3])}")
    if unexpected:
        details.append(f"unexpected keys {', '.join(unexpected[:3])}")
    if wrong:
        k = wrong[0]
        details.append(f"{k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
    return "; ".join(details)
