"""Output paths: before any work, make sure an output can be written where the user asked, or say why in one line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hs2trl.runtime.errors import Hs2Error


def check_writable(path: str | os.PathLike) -> None:
    """Create the folder an output goes in (its parent; a folder output is created by its command) and write a probe
    file there, so that a missing parent that cannot be created, a parent that is a file, a read-only filesystem or a
    permission problem is one line naming the path and the reason, before any model is loaded.

    A real attempt, not `os.access`: as root, `os.access` answers yes where writing still fails (/sys, some mounts)."""
    target = Path(path).expanduser()
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is not None and existing != target and not existing.is_dir():
        raise Hs2Error(f"{path}: cannot write the output there ({existing} is a file, not a folder)")
    try:
        if target.is_dir():
            _probe(target)
        elif target.exists():
            with open(target, "a", encoding="utf-8"):  # appending nothing changes nothing
                pass
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            _probe(target.parent)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if err.filename and os.fspath(err.filename) != os.fspath(path):
            reason += f": {err.filename}"
        raise Hs2Error(f"{path}: cannot write the output there ({reason})") from None


def _probe(folder: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".hs2-write-check-"):
            pass
    except OSError as err:  # name the folder, not the probe's random name
        raise OSError(err.errno, err.strerror, str(folder)) from None
