"""`accelerate launch`, as hs2 runs it: `python -m hs2trl.runtime.accelerate_launch ARGS` is `accelerate launch ARGS`,
except that a run that is stopped (Ctrl-C, SIGTERM) or whose rank fails ends with the rank's own message and exit
status (130 for Ctrl-C, 143 for SIGTERM, 2 for a user mistake), without the launcher's traceback and torch elastic's
error report on top of it. A rank killed by a signal (the OOM killer, say) prints nothing itself: that is one line
here.

Signals: with several processes torch elastic passes SIGINT/SIGTERM/SIGHUP on to the ranks and kills them
`TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds later if they are still running (torch's default 30 s would cut off the
checkpoint a large model is saving; here 600 s, and a second Ctrl-C still stops the ranks at once); with one process
(accelerate's simple launcher) this process passes SIGTERM/SIGHUP on to its children, and lets Ctrl-C, which the
terminal sends to every process of the group, reach the rank directly instead of dying of it first.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys


def _pass_on(signum, _frame) -> None:
    import psutil  # an accelerate dependency

    for child in psutil.Process().children(recursive=True):
        try:
            child.send_signal(signum)
        except psutil.Error:
            pass


def _status(exitcode: int) -> int:
    """The shell's exit status for a process's exit code (killed by signal N: 128 + N)."""
    return 128 - exitcode if exitcode < 0 else exitcode


def _failed_rank_status(failed) -> int:
    rank, failure = failed.get_first_failure()
    if failure.exitcode < 0:  # killed by a signal: the rank could not say anything
        try:
            name = signal.Signals(-failure.exitcode).name
        except ValueError:
            name = ""
        print(f"hs2: error: rank {rank} was killed by signal {-failure.exitcode} {name}".rstrip()
              + (" (out of memory?)" if failure.exitcode == -signal.SIGKILL else ""), file=sys.stderr, flush=True)
    return _status(failure.exitcode)  # else the rank printed its own message (or traceback) already


def main(argv: list[str] | None = None) -> int:
    import torch.distributed.run  # noqa: F401  (imports torch elastic's modules, and so creates their loggers)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # "Received 2 death signal, shutting down workers", "Sending process N closing signal": the ranks say what happens.
    # Each elastic module's logger has its own level (LOGLEVEL, WARNING): set them, not their parent's.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")
    signal.signal(signal.SIGINT, lambda *_: None)  # torch elastic installs its own handlers with several processes
    signal.signal(signal.SIGTERM, _pass_on)
    signal.signal(signal.SIGHUP, _pass_on)
    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except SignalException as stop:  # the ranks were sent the same signal and said what they did
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        return _failed_rank_status(failed)
    except subprocess.CalledProcessError as failed:  # accelerate's simple launcher (one process)
        return _status(failed.returncode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
