"""Output folders: before any work, make sure an output can be written where the user asked, or say why in one line;
what a folder holds (a model, checkpoints); whether a model name can be loaded from here."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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


def is_model_folder(folder: str | os.PathLike) -> bool:
    """A saved model: config.json, a PEFT adapter, or weights at the top level."""
    path = Path(folder)
    return path.is_dir() and (
        (path / "config.json").is_file()
        or (path / "adapter_config.json").is_file()
        or any(path.glob("*.safetensors"))
        or any(path.glob("*.bin"))
    )


def checkpoint_dirs(folder: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` sub-folders, oldest (lowest N) first."""
    found = [p for p in Path(folder).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def model_folder_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a loadable model (None when it is one)."""
    path = Path(folder)
    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return "a file, not a model folder"
    if is_model_folder(path):
        return None
    checkpoints = checkpoint_dirs(path)
    if checkpoints:
        return (f"no final model, only checkpoints up to {checkpoints[-1].name} (the run did not finish: resume it "
                "with --resume)")
    return "not a model folder (no config.json, adapter_config.json or weights)"


def check_model_source(name: str | None, field_name: str = "model_name_or_path",
                       check_folder: Callable[[str], object] | None = None) -> None:
    """A local model folder must hold a model (config.json, adapter or weights), and pass `check_folder` when given
    (the reward-model check, say: one line naming the field). A name that can only be a local path must exist. A Hub
    id, `pkg:` name or an earlier stage's output named like a Hub id (`outputs/rm`) passes.
    """
    if not name or not isinstance(name, str):
        return
    from hs2trl.runtime.pretrained import check_model_name

    check_model_name(name, field_name)
    if not os.path.exists(name):
        return
    problem = model_folder_problem(name)
    if problem:
        raise Hs2Error(f"{field_name} '{name}': {problem}")
    if check_folder is not None:
        try:
            check_folder(name)
        except Hs2Error as err:
            raise Hs2Error(f"{field_name} '{name}': {str(err).removeprefix(f'{name}: ')}") from None
