"""User mistakes become one line on stderr and exit status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable)


class Hs2Error(Exception):
    """A mistake in the user's input: a bad row, a missing file, an unknown recipe key."""


def where(source: str, row: int | None = None, field: str | None = None) -> str:
    """'file.jsonl: row 7: field 'response'' — the prefix of every data error."""
    parts = [str(source)]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ": ".join(parts)


def exit_on_user_error(fn: F) -> F:
    """Wrap an entry point: an `Hs2Error` prints `hs2: error: ...` and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Hs2Error as err:
            print(f"hs2: error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
