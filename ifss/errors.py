"""The one exception type for bad input: its message is a sentence naming the thing and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable


class IfssError(Exception):
    """User-facing error: the CLI prints its message alone and exits non-zero."""


def closest(value: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """The valid names nearest to `value` (difflib's ratio), best first."""
    return difflib.get_close_matches(str(value), [str(v) for v in valid], n=n)


def unknown(kind: str, value, valid: Iterable, where: str = "") -> IfssError:
    """'unknown task '5-O' for dataset voc (did you mean 5-0?); valid tasks: ...'."""
    valid = [str(v) for v in valid]
    close = closest(value, valid)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = f" {where}" if where else ""
    return IfssError(f"unknown {kind} {value!r}{where}{hint}; valid {kind}s: {', '.join(valid)}")
