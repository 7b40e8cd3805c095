"""Stage arguments: TRL's parser over the recipe and `--key value` pairs (every mistake one line), the data
arguments every stage shares, and the checks of model folders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hs2trl.runtime.choices import check_choices
from hs2trl.runtime.errors import Hs2Error, first_line
from hs2trl.runtime.outputs import check_model_source


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
    eval_dataset: str | None = field(
        default=None, metadata={"help": "A separate evaluation file (overrides the split)."}
    )
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


# Recipe keys that are not stage arguments: `env` (TRL's: environment variables) and `launch` (how hs2 launches the
# stage: processes, machines, accelerate config; read by `runtime.recipes.recipe_launch`).
RESERVED_KEYS = ("env", "launch")


def _load_recipe(path: str) -> dict:
    """The recipe as a mapping; a missing file, bad YAML or a non-mapping is one line."""
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
    return recipe


def _set_env(env, where_: str) -> None:
    """A recipe's `env:` mapping sets environment variables, as TRL's parser does."""
    if env is None:
        return
    if not isinstance(env, dict):
        raise Hs2Error(f"{where_}: env: expected a mapping of NAME: value")
    os.environ.update({str(k): str(v) for k, v in env.items()})


def _without_config(argv: list[str]) -> list[str]:
    """The arguments without `--config PATH` (the recipe is read by `_load_recipe`)."""
    if "--config" not in argv:
        return list(argv)
    i = argv.index("--config")
    return argv[:i] + argv[i + 2:]


def _unknown_keys(remaining: list[str]) -> list[str]:
    """The key names in TRL's remaining strings (`['--key', 'value', '--flag', ...]`)."""
    return [s[2:].split("=", 1)[0] for s in remaining if s.startswith("--") and len(s) > 2]


def _did_you_mean(keys: list[str], dataclass_types, option: bool = False) -> str:
    """`'max_stepz' (did you mean 'max_steps'?)` for each recipe key, `--max_stepz (did you mean --max_steps?)` for
    each option, with the closest known name where there is one."""
    import difflib

    known = sorted(_field_names(dataclass_types))
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
        name = (lambda k: f"--{k}") if option else (lambda k: f"'{k}'")
        hints.append(name(key) + (f" (did you mean {name(close[0])}?)" if close else ""))
    return ", ".join(hints)


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


def parse_stage_args(dataclass_types, argv: list[str] | None):
    """Parse `--config recipe.yaml` and `--key value` pairs into the dataclasses with TRL's parser; any mistake is
    one line. Unknown recipe keys and unknown options come from the parser's own remaining strings.

    The keys set explicitly (recipe + command line) are remembered on each returned object for `save_recipe`."""
    import sys

    from hs2trl.runtime.hardware import apply_machine_defaults, check_bf16, resolve_bf16

    given = list(argv) if argv is not None else sys.argv[1:]
    at = given.index("--config") + 1 if "--config" in given else None
    recipe_path = given[at] if at is not None and at < len(given) else None
    recipe = _load_recipe(recipe_path) if recipe_path else {}
    where_ = recipe_path or "the command line"
    argv, bf16_note = resolve_bf16(given, recipe)
    check_bf16(argv, recipe, where_)
    # TRL's parser in two of its own steps (what `parse_args_and_config` does), so that the recipe's unknown keys are
    # reported before any dataclass is built: a misspelt key would otherwise surface as some dataclass's complaint
    # about a value the key was meant to change.
    parser = stage_parser(dataclass_types)
    _set_env(recipe.get("env"), where_)
    settings = {k: v for k, v in recipe.items() if k not in RESERVED_KEYS}
    unknown = _unknown_keys(parser.set_defaults_with_config(**settings))
    if unknown:
        raise Hs2Error(f"{where_}: unknown key{'s' if len(unknown) > 1 else ''} "
                       f"{_did_you_mean(unknown, dataclass_types)}")
    try:
        *parsed, from_command_line = parser.parse_args_into_dataclasses(
            args=_without_config(argv), return_remaining_strings=True)
    except ValueError as err:  # a dataclass's own check (__post_init__) refused a value
        raise Hs2Error(first_line(err)) from None
    except TypeError as err:
        raise Hs2Error(f"{where_}: {err}") from None
    if from_command_line:
        options = _unknown_keys(from_command_line)
        raise Hs2Error(
            f"unknown option{'s' if len(options) > 1 else ''} "
            f"{_did_you_mean(options, dataclass_types, option=True) if options else ' '.join(from_command_line)}"
        )
    for obj in parsed:
        check_choices(obj, where_)
    explicit = [k for k in recipe if k not in RESERVED_KEYS] + [k for k in command_line_keys(given) if k not in recipe]
    apply_machine_defaults(parsed, explicit, bf16_note)
    for obj in parsed:
        try:
            object.__setattr__(obj, "_hs2_explicit", [k for k in explicit if hasattr(obj, k)])
            object.__setattr__(obj, "_hs2_recipe", recipe_path)
        except (AttributeError, TypeError):  # a frozen/slotted dataclass: save_recipe falls back to non-defaults
            pass
    # The command line, for a stage that runs its phases in child processes; kept on the script's own arguments only:
    # the training arguments are pickled into every checkpoint, and the command line may hold a token.
    object.__setattr__(parsed[0], "_hs2_argv", given)
    for obj in parsed:
        check_model_source(getattr(obj, "model_name_or_path", None), "model_name_or_path")
    return tuple(parsed)


def stage_argv(script_args) -> list[str]:
    """The command line the stage's first dataclass (its script arguments) was parsed from: what a stage that runs its
    phases in child processes (iterative DPO's rounds, SteerLM 2.0's sampling) hands each child."""
    return list(getattr(script_args, "_hs2_argv", None) or [])


def run_stage(parse, main, argv: list[str] | None = None) -> None:
    """A stage as `python -m hs2trl.stages.NAME ...`: parse the arguments once and hand the dataclasses to `main`, as
    TRL's scripts do; a user mistake is one line and exit 2."""
    import sys

    from hs2trl.runtime.errors import exit_on_user_error

    exit_on_user_error(lambda: main(*parse(sys.argv[1:] if argv is None else argv)))()
