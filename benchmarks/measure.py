"""How every benchmark measures: step clocks, peak memory, interleaved repeats and their medians, MFU."""

from __future__ import annotations

import ctypes
import gc
import math
import statistics
import threading
import time


def default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def free_gpu():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on GPU, else peak RSS growth (sampled every 5 ms)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import psutil

        try:  # give freed heap back to the OS so that RSS growth is this block's own
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.stop.wait(0.005)

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.process.memory_info().rss)
        self.peak_mib = round(self.peak / 2**20, 1)
        self.growth_mib = round((self.peak - self.start) / 2**20, 1)
        return False


# ------------------------------------------------------------------------------------------------- trainer runs
class StepClock:
    """Trainer callback: wall time, CPU time and non-padding tokens at the end of every optimizer step."""

    def __init__(self, device: str):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if not clock.marks:
                    clock.mark()

            def on_step_end(self, args, state, control, **kw):
                clock.mark()

        self.device, self.marks, self.callback, self.trainer = device, [], _Callback(), None

    def mark(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        tokens = self.trainer._total_train_tokens if self.trainer is not None else 0
        self.marks.append((time.perf_counter(), time.process_time(), tokens))


def trainer_settings(settings: dict, name: str) -> dict:
    """The training arguments every timed run shares: constant LR, no saving, logging or progress bars."""
    return dict(
        output_dir=str(settings["work_dir"] / name), learning_rate=settings["lr"], lr_scheduler_type="constant",
        optim=settings.get("optim", "adamw_torch"), seed=42, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, bf16=settings["bf16"], max_length=None, dataloader_num_workers=0,
        dataloader_pin_memory=settings["device"] == "cuda",
    )


def step_figures(marks: list, warm: int) -> dict:
    """Throughput from a `StepClock`'s marks ((wall, cpu, tokens) at the start and after each step); the first
    `warm` steps are not timed."""
    steps = len(marks) - 1
    (t0, c0, k0), (t1, c1, k1) = marks[warm], marks[-1]
    return {
        "steps": steps,
        "timed_steps": steps - warm,
        "tokens_timed": k1 - k0,
        "tokens_epoch": k1,
        "seconds_timed": round(t1 - t0, 3),
        "tokens_per_s": (k1 - k0) / (t1 - t0),
        "tokens_per_cpu_s": (k1 - k0) / max(c1 - c0, 1e-9),
        "tokens_per_s_whole_epoch": k1 / (t1 - marks[0][0]),
        "step_seconds": [round(b[0] - a[0], 3) for a, b in zip(marks, marks[1:], strict=False)],
    }


def mfu(params: int, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation: 6 x params x tokens/s over the device's peak FLOP/s."""
    return 6 * params * tokens_per_s / peak


def param_counts(model) -> tuple[int, int]:
    """(all parameters, the input embedding's): MFU counts both ways (an embedding lookup costs no FLOPs)."""
    return sum(p.numel() for p in model.parameters()), model.get_input_embeddings().weight.numel()


# ------------------------------------------------------------------------------------------------------- repeats
def interleaved(kinds: list[str], repeats: int, run_one, describe, log, include=lambda kind, r: True) -> dict:
    """{kind: [result of each repeat]}: every repeat runs each kind (those `include` keeps), in the opposite order on
    odd repeats, so that a machine slowing down or speeding up during the bench favours none."""
    runs = {k: [] for k in kinds}
    for r in range(repeats):
        this_repeat = [k for k in kinds if include(k, r)]
        for kind in (this_repeat if r % 2 == 0 else this_repeat[::-1]):
            result = run_one(kind)
            runs[kind].append(result)
            log(describe(r, kind, result))
    return runs


def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def medians(results: list[dict], *keys: str) -> dict:
    return {f"{k}_median": median([x[k] for x in results]) for k in keys}


def quantiles(values) -> dict:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]  # noqa: E731
    return {"min": values[0], "p25": pick(0.25), "median": pick(0.5), "p75": pick(0.75), "max": values[-1],
            "mean": round(sum(values) / len(values), 1)}
