"""Stage arguments: TRL's parser over the recipe and `--key value` pairs (every mistake one line), the data
arguments every stage shares, and the checks of model folders."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from hs2trl.hub.folders import check_model_source
from hs2trl.runtime.errors import Hs2Error


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


def load_splits(data_args: DataArguments) -> tuple[list, list]:
    """Training and evaluation records: the eval file, else the test split of a Hub/demo dataset, else (with an
    `eval_fraction` > 0) the last rows of the training data, an even count so that HelpSteer2 pairs stay whole."""
    from hs2trl.data.records import is_local
    from hs2trl.data.sources import read_records

    train = read_records(data_args.dataset_name, data_args.dataset_train_split)[: data_args.max_train_rows]
    eval_fraction = getattr(data_args, "eval_fraction", 0.0)
    if data_args.eval_dataset:
        evaluation = read_records(data_args.eval_dataset)
    elif not is_local(data_args.dataset_name) and data_args.dataset_test_split:
        evaluation = read_records(data_args.dataset_name, data_args.dataset_test_split)
    elif eval_fraction > 0:
        n_eval = 2 * max(1, round(len(train) * eval_fraction / 2))
        train, evaluation = train[:-n_eval], train[-n_eval:]
    else:
        evaluation = []
    if not train:
        raise Hs2Error(f"{data_args.dataset_name}: no training rows")
    return train, evaluation[: data_args.max_eval_rows]


def stage_parser(dataclass_types):
    from trl import TrlParser

    class StageParser(TrlParser):
        def error(self, message):  # argparse would print usage and exit; we want one line
            raise Hs2Error(message)

    return StageParser(dataclass_types)


def _field_names(dataclass_types) -> set[str]:
    from dataclasses import fields as dc_fields

    return {f.name for t in dataclass_types for f in dc_fields(t) if f.init}


def _load_recipe(path: str, known: set[str]) -> dict:
    """The recipe as a mapping, with any key no stage dataclass knows reported (with the closest known key)."""
    import difflib

    import yaml

    if not os.path.isfile(path):
        raise Hs2Error(f"{path}: no such recipe file")
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise Hs2Error(f"{path}: {at}not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise Hs2Error(f"{path}: a recipe must be a YAML mapping of `key: value`, got {type(recipe).__name__}")
    unknown = [k for k in recipe if k != "env" and k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise Hs2Error(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}")
    return recipe


def command_line_keys(argv: list[str]) -> list[str]:
    """The `--key` names given on a stage command line (after the recipe)."""
    keys = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--config":
            skip = True
        elif token.startswith("--") and len(token) > 2:
            keys.append(token[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def _closest_key(options: list[str], dataclass_types) -> str:
    """' (did you mean --max_steps?)' for a misspelt `--max_stepz`, else ''."""
    import difflib

    names = [o.lstrip("-").split("=", 1)[0].replace("-", "_") for o in options if o.startswith("--")]
    close = difflib.get_close_matches(names[0], sorted(_field_names(dataclass_types)), n=1) if len(names) == 1 else []
    return f" (did you mean --{close[0]}?)" if close else ""


def parse_stage_args(dataclass_types, argv: list[str] | None):
    """Parse `--config recipe.yaml` and `--key value` pairs into the dataclasses; any mistake is one line.

    The keys set explicitly (recipe + command line) are remembered on each returned object for `save_recipe`."""
    import sys

    from hs2trl.runtime.hardware import apply_machine_defaults, resolve_bf16

    given = list(argv) if argv is not None else sys.argv[1:]
    recipe_path = given[given.index("--config") + 1] if "--config" in given and given.index("--config") + 1 < len(given) else None
    recipe = _load_recipe(recipe_path, _field_names(dataclass_types)) if recipe_path else {}
    where_ = recipe_path or "the command line"
    argv, bf16_note = resolve_bf16(given, recipe)
    try:
        parsed = stage_parser(dataclass_types).parse_args_and_config(argv)
    except FileNotFoundError as err:
        raise Hs2Error(f"{err.filename}: no such recipe file") from None
    except ValueError as err:
        msg = str(err)
        if msg.startswith("Unknown arguments from config file"):
            keys = re.findall(r"'--([^']+)'", msg.split(":", 1)[1])[::2] or [msg]
            raise Hs2Error(f"{where_}: unknown key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))}") from None
        if "not used by the HfArgumentParser" in msg:
            unused = re.findall(r"'(--?[^']+)'", msg)
            raise Hs2Error(f"unknown option{'s' if len(unused) > 1 else ''} {' '.join(unused) or msg}"
                           + _closest_key(unused, dataclass_types)) from None
        if "bf16/gpu" in msg:
            raise Hs2Error(
                f"{where_}: bf16 needs a GPU that has it (Ampere or newer) or the CPU (`--use_cpu true`): set "
                "`bf16: false` in the recipe or pass `--bf16 false`"
            ) from None
        raise Hs2Error(msg.splitlines()[0]) from None
    except TypeError as err:
        raise Hs2Error(f"{where_}: {err}") from None
    explicit = [k for k in recipe if k != "env"] + [k for k in command_line_keys(given) if k not in recipe]
    apply_machine_defaults(parsed, explicit, bf16_note)
    for obj in parsed:
        try:
            object.__setattr__(obj, "_hs2_explicit", [k for k in explicit if hasattr(obj, k)])
            object.__setattr__(obj, "_hs2_recipe", recipe_path)
        except (AttributeError, TypeError):  # a frozen/slotted dataclass: save_recipe falls back to non-defaults
            pass
    for obj in parsed:
        check_model_source(getattr(obj, "model_name_or_path", None), "model_name_or_path")
    return parsed
