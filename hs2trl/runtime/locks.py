"""One writer per output: a lock beside each output file or folder, held for the whole life of the command.

    with output_lock("outputs/rm", command="train-rm"):
        ...

Beside `outputs/rm` (a file or a folder, existing or not) the holder keeps two hidden files: `.rm.hs2.lock`, an OS
lock (`filelock`: flock on Unix), and `.rm.hs2.lock.json`, the holder record (pid, host, command, since), refreshed
every minute. They sit next to the output, never inside it, so a pushed model folder never carries them.

- A second command on the same output refuses at once: `hs2: error: outputs/rm: in use by `hs2 train-rm` (pid 4242
  on node1, since 2026-05-01 09:12:03) ...`, exit status 2.
- A holder that is gone is taken over with a one-line notice: the OS releases a dead process's lock, so on one machine
  a record whose process is gone is simply stale; a record from another machine is stale once it has not been
  refreshed for `STALE_AFTER_S`. (The record is what stops a run on another machine where the filesystem's locks do
  not reach across machines, e.g. NFS without lockd.)
- Only the main process (RANK 0) takes the lock; the other ranks of a launch share it. An `hs2` command holds the
  lock around its whole `accelerate launch`, and names the outputs it holds in `HS2_OUTPUT_LOCKS` for its children:
  a stage launched by it (or a stage that runs another in-process, such as `hs2 steerlm` annotating into its own
  folder) finds its output, or a folder that contains it, held by its parent and goes on without a second lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.outputs import check_writable

HELD_ENV = "HS2_OUTPUT_LOCKS"  # {output path: "host:pid"} of the outputs held by this process or an ancestor
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # a record from another machine not refreshed for this long belongs to a run that is gone


@dataclass
class Holder:
    pid: int
    host: str
    command: str
    since: str

    def describe(self) -> str:
        return f"`hs2 {self.command}` (pid {self.pid} on {self.host}, since {self.since})"

    @property
    def key(self) -> str:
        return f"{self.host}:{self.pid}"


def lock_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(OS lock file, holder record) of an output: hidden files beside it."""
    target = _absolute(path)
    lock = target.parent / f".{target.name}.hs2.lock"
    return lock, lock.with_name(lock.name + ".json")


def read_holder(path: str | os.PathLike) -> Holder | None:
    """The holder record of an output (None when there is none, or it cannot be read)."""
    record = lock_files(path)[1]
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        return Holder(int(data["pid"]), str(data["host"]), str(data["command"]), str(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def output_lock(path: str | os.PathLike, command: str):
    """Hold the output `path` for the life of the block (see the module doc). Refuses with an `Hs2Error` naming the
    holder when another run holds it; checks first that the output can be written (`outputs.check_writable`)."""
    if int(os.environ.get("RANK", "0")) != 0 or _held_by_us_or_parent(path):
        yield
        return
    from filelock import FileLock, Timeout

    check_writable(path)
    lock_path, record = lock_files(path)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Hs2Error(_in_use(path, _wait_for_record(path))) from None
    except (OSError, NotImplementedError) as err:  # NotImplementedError: filelock 3 on a filesystem without flock
        raise Hs2Error(f"{path}: cannot lock the output "
                       f"({getattr(err, 'strerror', None) or err}: {lock_path})") from None
    try:
        previous = read_holder(path)
        if previous is not None and not _gone(previous, record):
            raise Hs2Error(_in_use(path, previous))  # another machine, where this lock is not seen (NFS without lockd)
        if previous is not None:
            print(f"hs2: note: {path}: taking over the lock of {previous.describe()}, which {_why_gone(previous)}",
                  file=sys.stderr, flush=True)
        me = Holder(os.getpid(), socket.gethostname(), command, time.strftime("%Y-%m-%d %H:%M:%S"))
        _write_record(record, me)
        stop = threading.Event()
        threading.Thread(target=_heartbeat, args=(record, stop), daemon=True, name="hs2-lock-heartbeat").start()
        held = _held()
        os.environ[HELD_ENV] = json.dumps({**held, str(_absolute(path)): me.key})
        try:
            yield
        finally:
            stop.set()
            _restore_env(held)
            record.unlink(missing_ok=True)
    finally:
        lock.release()


def _absolute(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _held() -> dict[str, str]:
    try:
        held = json.loads(os.environ.get(HELD_ENV, "{}"))
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


def _restore_env(held: dict[str, str]) -> None:
    if held:
        os.environ[HELD_ENV] = json.dumps(held)
    else:
        os.environ.pop(HELD_ENV, None)


def _held_by_us_or_parent(path) -> bool:
    """The output (or a folder containing it) is held by this process or by the hs2 process that started it: the
    environment names it, and its record on disk names the same holder, still running."""
    target = _absolute(path)
    for held_path, key in _held().items():
        held = Path(held_path)
        if held == target or held in target.parents:
            holder = read_holder(held)
            if holder is not None and holder.key == key and _alive(holder.pid):
                return True
    return False


def _wait_for_record(path, seconds: float = 2.0) -> Holder | None:
    """The holder's record: a holder that has just taken the lock may not have written it yet."""
    deadline = time.monotonic() + seconds
    while (holder := read_holder(path)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return holder


def _in_use(path, holder: Holder | None) -> str:
    who = holder.describe() if holder is not None else "another process"
    return (f"{path}: in use by {who}; one command writes an output at a time: wait for it to finish, stop it, or "
            "choose another output")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _gone(holder: Holder, record: Path) -> bool:
    """Whether a record found beside an output we now hold the OS lock of belongs to a run that is gone."""
    if holder.host == socket.gethostname():
        return True  # on one machine the OS lock is authoritative: its holder released it or died
    return _age(record) > STALE_AFTER_S


def _why_gone(holder: Holder) -> str:
    if holder.host == socket.gethostname():
        return "is no longer running" if not _alive(holder.pid) else "no longer holds it"
    return f"has not been seen for over {STALE_AFTER_S / 60:g} minutes"


def _age(record: Path) -> float:
    try:
        return time.time() - record.stat().st_mtime
    except OSError:
        return float("inf")


def _write_record(record: Path, holder: Holder) -> None:
    tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(holder)) + "\n", encoding="utf-8")
    tmp.replace(record)


def _heartbeat(record: Path, stop: threading.Event) -> None:
    """Refresh the record's time: how another machine tells a live holder from a dead one."""
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(record)
        except OSError:
            pass
