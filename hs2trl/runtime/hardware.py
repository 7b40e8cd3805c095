"""Training settings that depend on the machine: bf16 on a CPU (asked for with `--bf16 true`, or `bf16: auto`), pinned
memory only where there is an accelerator, and DDP without its unused-parameter search."""

from __future__ import annotations

from hs2trl.runtime.args import command_line_keys
from hs2trl.runtime.errors import Hs2Error

BF16_NOTE = "_hs2_bf16_note"


def _truthy(value) -> bool:
    """The parser's own reading of a boolean (a value it refuses counts as false here; the parser then says why)."""
    from argparse import ArgumentTypeError

    from transformers.hf_argparser import string_to_bool

    try:
        return string_to_bool(value if isinstance(value, bool) else str(value).strip())
    except ArgumentTypeError:
        return False


def _without_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """argv without `--name V` / `--name=V` (every occurrence), and the last value given."""
    out, value, skip = [], None, False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token == f"--{name}":
            given = i + 1 < len(argv) and not argv[i + 1].startswith("--")  # a bare flag means true
            value, skip = (argv[i + 1], True) if given else ("true", False)
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1]
        else:
            out.append(token)
    return out, value


def has_accelerator() -> bool:
    import torch

    return torch.accelerator.is_available()


def resolve_bf16(argv: list[str], recipe: dict) -> tuple[list[str], str | None]:
    """Settle bf16 before TRL's parser sees it. `auto` becomes true where the GPU has bf16, or, on a machine without
    one, where the CPU runs it natively and faster (`cpu_bf16`); false otherwise. bf16 on a machine without a GPU
    adds `--use_cpu true`, which transformers needs to allow it. Returns the arguments and, for bf16 on a CPU, a
    note for the training line (else None)."""
    rest, cli_value = _without_option(argv, "bf16")
    value = cli_value if cli_value is not None else recipe.get("bf16")
    if value is None:
        return argv, None
    note = None
    if str(value).strip().lower() == "auto":
        if has_accelerator():
            from transformers.utils import is_torch_bf16_gpu_available

            on = is_torch_bf16_gpu_available()
        else:
            from hs2trl.runtime.cpu_bf16 import cpu_bf16

            verdict = cpu_bf16()
            on, note = verdict.fast, f"bf16: auto ({verdict.reason()})"
        argv = [*rest, "--bf16", "true" if on else "false"]
    else:
        on = _truthy(value)
    if not on or has_accelerator():
        return argv, None
    if "use_cpu" not in command_line_keys(argv) and "use_cpu" not in recipe:  # --use_cpu or --use-cpu
        argv = [*argv, "--use_cpu", "true"]  # without a GPU, bf16 means autocast on the CPU
    return argv, note or "bf16 on the CPU (no GPU here)"


def check_bf16(argv: list[str], recipe: dict, where_: str) -> None:
    """bf16 where transformers would refuse it (no bf16 GPU, and not on the CPU) is one line before TRL's parser
    runs: transformers' own test, said here rather than matched in its error text. Call after `resolve_bf16`."""
    _, bf16 = _without_option(argv, "bf16")
    _, use_cpu = _without_option(argv, "use_cpu")
    bf16 = bf16 if bf16 is not None else recipe.get("bf16")
    use_cpu = use_cpu if use_cpu is not None else recipe.get("use_cpu", False)
    if bf16 is None or not _truthy(bf16) or _truthy(use_cpu):
        return
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    if not is_torch_bf16_gpu_available() and not is_torch_xla_available():
        raise Hs2Error(f"{where_}: bf16 needs a GPU that has it (Ampere or newer) or the CPU (`--use_cpu true`): "
                       "set `bf16: false` in the recipe or pass `--bf16 false`")


def apply_machine_defaults(parsed, explicit: list[str], bf16_note: str | None) -> None:
    """After parsing, for each training config (settings the user gave are kept): no pinned memory without an
    accelerator (the DataLoader warns otherwise), and `ddp_find_unused_parameters` false, because every parameter the
    stages hand to DDP gets a gradient (RM, SFT, DPO, SteerLM, SteerLM 2.0; PPO builds its own Accelerator, which
    never searches) and the search costs an extra pass over the autograd graph each step."""
    accelerator = has_accelerator()
    for obj in parsed:
        if not hasattr(obj, "ddp_find_unused_parameters"):
            continue
        if obj.ddp_find_unused_parameters is None and "ddp_find_unused_parameters" not in explicit:
            obj.ddp_find_unused_parameters = False
        if not accelerator and "dataloader_pin_memory" not in explicit:
            obj.dataloader_pin_memory = False
        if bf16_note and getattr(obj, "bf16", False):
            object.__setattr__(obj, BF16_NOTE, bf16_note)


def precision_note(training_args) -> str:
    """'; bf16 on the CPU (...)' for the training line, or '' (fp32, or bf16 on a GPU)."""
    note = getattr(training_args, BF16_NOTE, None)
    return f"; {note}" if note else ""
