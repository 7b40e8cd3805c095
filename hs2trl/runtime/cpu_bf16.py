"""Whether this CPU trains faster in bf16 than in fp32, for `bf16: auto`.

bf16 pays on a CPU only where its matrix products run natively (AVX512-BF16 or AMX-BF16 instructions); elsewhere
torch emulates them and bf16 is several times slower than fp32. So: no such instructions, no bf16; with them, one
short timing of a bf16 against an fp32 matrix product decides (some CPUs have the instructions at half speed). The
verdict is cached per CPU model and torch version under the hs2trl cache folder, so every later run (and every rank
of a run) reads the same answer.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass

from hs2trl.runtime.cache import cache_dir

CACHE_FILE = "cpu_bf16.json"
MIN_SPEEDUP = 1.3  # below this the conversions around each product eat the gain


@dataclass
class CpuBf16:
    fast: bool
    instructions: list[str]
    speedup: float | None  # bf16 / fp32 matrix-product throughput, when measured

    def reason(self) -> str:
        if not self.instructions:
            return "this CPU has no native bf16 instructions (AVX512-BF16, AMX-BF16)"
        return (f"this CPU's bf16 matrix products ({', '.join(self.instructions)}) "
                f"run {self.speedup:.1f}x its fp32 ones")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def native_instructions() -> list[str]:
    """The bf16 matrix instructions this CPU has, as torch sees them (its own checks, else /proc/cpuinfo's flags)."""
    import torch

    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    try:
        return [name for name, check in checks.items() if getattr(torch.cpu, check)()]
    except AttributeError:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        return [name for name in checks if name in flags]


def measure_speedup(size: int = 1024, repeats: int = 5) -> float:
    """Median over interleaved repeats of fp32 time / bf16 time for a size x size matrix product (under a second)."""
    import torch

    a32, b32 = torch.randn(size, size), torch.randn(size, size)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def seconds(a, b) -> float:
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        return time.perf_counter() - start

    seconds(a32, b32), seconds(a16, b16)  # warm-up: thread pools, kernel selection
    return statistics.median(seconds(a32, b32) / seconds(a16, b16) for _ in range(repeats))


def cpu_bf16() -> CpuBf16:
    """The cached verdict for this CPU model and torch version, measured now when there is none."""
    import torch

    key = f"{cpu_model()} | torch {torch.__version__}"
    path = cache_dir() / CACHE_FILE
    try:
        cached = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        cached = None
    if isinstance(cached, dict):
        try:
            return CpuBf16(**cached)
        except TypeError:
            pass
    instructions = native_instructions()
    speedup = round(measure_speedup(), 2) if instructions else None
    verdict = CpuBf16(fast=bool(instructions) and speedup >= MIN_SPEEDUP, instructions=instructions, speedup=speedup)
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    known[key] = asdict(verdict)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n")
        os.replace(tmp, path)  # ranks measuring at once each write a whole file
    except OSError:  # a read-only cache folder: measure again next time
        pass
    return verdict
