"""What every stage shares: argument parsing (TRL's parser, errors as one line), data splits, resume, push, env."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import Hs2Error

# Telemetry off and no tokenizer fork warnings in every stage process.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class DataArguments:
    """Where the data comes from; shared by every stage."""

    dataset_name: str = field(
        default="demo:helpsteer2",
        metadata={"help": "A Hub dataset id, a local .jsonl/.jsonl.gz/.json/.parquet file, or demo:helpsteer2."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (Hub/demo datasets)."})
    dataset_test_split: str | None = field(
        default="validation", metadata={"help": "Split to evaluate on (Hub/demo datasets); none to skip."}
    )
    eval_dataset: str | None = field(default=None, metadata={"help": "A separate evaluation file (overrides the split)."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_rows: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})


def stage_parser(dataclass_types):
    from trl import TrlParser

    class StageParser(TrlParser):
        def error(self, message):  # argparse would print usage and exit; we want one line
            raise Hs2Error(message)

    return StageParser(dataclass_types)


def parse_stage_args(dataclass_types, argv: list[str] | None):
    """Parse `--config recipe.yaml` and `--key value` pairs into the dataclasses; any mistake is one line."""
    argv = list(argv) if argv is not None else None
    recipe = argv[argv.index("--config") + 1] if argv and "--config" in argv else "the recipe"
    try:
        return stage_parser(dataclass_types).parse_args_and_config(argv)
    except FileNotFoundError as err:
        raise Hs2Error(f"{err.filename}: no such recipe file") from None
    except ValueError as err:
        msg = str(err)
        if msg.startswith("Unknown arguments from config file"):
            keys = re.findall(r"'--([^']+)'", msg.split(":", 1)[1])[::2] or [msg]
            raise Hs2Error(f"{recipe}: unknown key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))}") from None
        if "not used by the HfArgumentParser" in msg:
            unused = re.findall(r"'(--?[^']+)'", msg)
            raise Hs2Error(f"unknown option{'s' if len(unused) > 1 else ''} {' '.join(unused) or msg}") from None
        raise Hs2Error(msg.splitlines()[0]) from None
    except TypeError as err:
        raise Hs2Error(f"{recipe}: {err}") from None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resume_checkpoint(output_dir: str, resume: bool) -> str | None:
    """The last `checkpoint-N` in output_dir when --resume is set (None to start afresh)."""
    if not resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last is None:
        print(f"hs2: --resume: no checkpoint in {output_dir}; starting from the beginning", flush=True)
    else:
        print(f"hs2: resuming from {last}", flush=True)
    return last


def take_push_settings(training_args) -> tuple[bool, str | None]:
    """Training never talks to the Hub (a network failure must not kill a run): push only after saving locally."""
    push, hub_id = training_args.push_to_hub, training_args.hub_model_id
    training_args.push_to_hub = False
    if push and not hub_id:
        hub_id = os.path.basename(os.path.normpath(training_args.output_dir))
    return push, hub_id


def push_after_training(folder: str, push: bool, hub_model_id: str | None, revision: str | None = None) -> None:
    if not (push and is_main_process()):
        return
    from ..hub import push_folder

    url = push_folder(folder, hub_model_id, revision=revision)
    print(f"hs2: pushed {folder} to {hub_model_id} ({url})", flush=True)
