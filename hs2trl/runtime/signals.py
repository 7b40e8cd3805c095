"""SIGTERM or Ctrl-C during training: finish the step, save a checkpoint, exit 143 / 130 (every rank at the same
step)."""

from __future__ import annotations

import os

from hs2trl.runtime.process import is_main_process


class StopOnSignal:
    """SIGTERM (a scheduler's preemption, `kill`) or SIGINT (Ctrl-C) stops training cleanly: the step in progress
    finishes, a checkpoint of that step is saved, and the process exits with the shell's status for the signal (143,
    130). `--resume` continues from there and reaches the same weights as an uninterrupted run. A second signal (2 s
    or more later) kills at once. In a multi-process run every rank stops at the same step (the flag is all-reduced
    each step), so the collective checkpoint save cannot deadlock."""

    def __init__(self, signals=None):
        import signal

        self.signals = tuple(signals or (signal.SIGTERM, signal.SIGINT))
        self.received: int | None = None
        self._first_at = 0.0
        self._previous: dict = {}
        self.stopped_at: int | None = None

    # Copies of one stop request arrive together (the process group's signal plus the one a launcher forwards):
    # only a signal that comes this much later is a second request.
    REPEAT_AFTER_S = 2.0

    def _handle(self, signum, frame):
        import signal
        import time

        now = time.monotonic()
        if self.received is not None:
            if now - self._first_at < self.REPEAT_AFTER_S:
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # a second request: die at once
            return
        self.received, self._first_at = signum, now
        if is_main_process():  # one line per run, not per rank
            what = "Ctrl-C" if signum == signal.SIGINT else f"signal {signum}"
            # os.write, not print: a handler that prints while the main thread prints raises "reentrant call"
            os.write(2, f"hs2: {what}: saving a checkpoint after this step, then stopping (again to stop at once)\n"
                     .encode())

    @property
    def exit_status(self) -> int:
        return 128 + (self.received or 15)

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            if self.received != sig:
                signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, device=None) -> bool:
        flag = self.received is not None
        try:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                t = torch.tensor([1 if flag else 0], device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flag = bool(t.item())
        except (ImportError, RuntimeError):
            pass
        return flag

    def callback(self):
        from transformers import TrainerCallback

        owner = self

        class _StopCallback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if owner.requested(getattr(args, "device", None)):
                    control.should_save = True
                    control.should_training_stop = True
                    owner.stopped_at = state.global_step
                return control

        return _StopCallback()
