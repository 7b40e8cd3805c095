"""Which process this is, and the environment every stage process sets up before it imports the libraries."""

from __future__ import annotations

import atexit
import os
import sys
import warnings


def configure_environment() -> None:
    # Telemetry off and no tokenizer fork warnings in every stage process.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # TRL's own configs still set `gradient_checkpointing`; transformers 5 warns about the name on every parse.
    warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)
    _cpu_ranks_use_gloo()
    atexit.register(_leave_process_group)


def _leave_process_group() -> None:
    """End the process group before the interpreter's own teardown does: there, a rank of a multi-node run can abort
    ("terminate called without an active exception"), its node's launcher then reports a failure, and the other
    nodes wait 5 minutes at torchelastic's exit barrier."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _cpu_ranks_use_gloo() -> None:
    """Under a multi-process launch on a machine without a GPU, make accelerate/transformers run a real CPU (gloo)
    data-parallel job; otherwise each rank would believe it is alone."""
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")


_cpu_ranks_use_gloo()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0

