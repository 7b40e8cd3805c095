"""The `hs2: ...` lines a run prints, once per run rather than once per rank.

Where the run has its accelerate state (every stage once its trainer or accelerator exists), the line goes through
accelerate's own main-process print (`PartialState().print`); before that, rank 0 (the RANK variable a launcher sets)
prints it. `say` never creates the state itself: the first `PartialState(...)` of a process fixes its settings
(backend, timeout, CPU), and that is the trainer's to make."""

from __future__ import annotations

import sys

from hs2trl.runtime.process import is_main_process


def say(message: str, *, err: bool = False) -> None:
    """Print `hs2: message` (to stderr with `err`) from the main process only."""
    from accelerate import PartialState

    text, stream = f"hs2: {message}", sys.stderr if err else sys.stdout
    if PartialState._shared_state:  # accelerate's state exists: its own idea of the main process
        PartialState().print(text, file=stream, flush=True)
    elif is_main_process():
        print(text, file=stream, flush=True)
