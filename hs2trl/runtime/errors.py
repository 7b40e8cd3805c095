"""User mistakes become one line on stderr and exit status 2, and so does a run that lost one of its processes (a
node died); Ctrl-C is one line and exit status 130; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + 2  # the shell's status for SIGINT

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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the same command continues from (a KeyboardInterrupt still: nothing may swallow it)."""

    def __init__(self, continues_from: str):
        super().__init__(continues_from)
        self.continues_from = continues_from


@contextmanager
def continues_from(what: str):
    """Ctrl-C inside the block says what the same command will continue from, e.g. 'the rows already in out.jsonl'."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(what) from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (torch's distributed errors append pages of C++ frames)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def lost_process(err: BaseException) -> str | None:
    """The one line for an error that only says another process of a distributed run went away (a node that died
    or was stopped: gloo's or the store's connection to it closed), else None."""
    text = str(err)
    closed = re.search(r"Connection (?:closed|reset) by peer|Broken pipe", text)
    if not closed and type(err).__name__ != "DistNetworkError":
        return None
    peer = re.search(r"\[([^\]\s/]+)\]:\d+", text)  # gloo names the peer as [address]:port
    at = f" at {peer.group(1)}" if peer else ""
    return (f"lost contact with another process of this run{at} (it stopped, or its node went away; its own log says "
            "why): start the run again on every node (--resume continues from the last checkpoint)")


def exit_on_user_error(fn: F) -> F:
    """Wrap an entry point: an `Hs2Error` prints `hs2: error: ...` and exits with status 2, and so does losing another
    process of a multi-process run (the traceback would only say where this process was waiting); Ctrl-C prints
    `hs2: interrupted; the same command continues from ...` (once, from the main process) and exits with status 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Hs2Error as err:
            print(f"hs2: error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as interrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a copy of the same Ctrl-C (a launcher passes it on)
            if int(os.environ.get("RANK", "0")) == 0:
                what = getattr(interrupt, "continues_from", None)
                print("hs2: interrupted; " + (f"the same command continues from {what}" if what else
                                              "the same command starts again"),
                      file=sys.stderr, flush=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as err:
            line = lost_process(err)
            if line is None:
                raise
            print(f"hs2: error: {line}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
