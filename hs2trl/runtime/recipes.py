"""The recipes and accelerate configs that ship with hs2trl: finding them by name, and which stage reads a recipe."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hs2trl.runtime.errors import Hs2Error, first_line

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # hs2trl/


def bundled_dir(kind: str) -> Path:
    """`recipes` or `accelerate_configs`: inside the installed package (wheel), else at the repository root."""
    for candidate in (_PACKAGE_DIR / "_bundled" / kind, _PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise Hs2Error(f"the bundled {kind} folder is missing from this installation")


def _resolve(name: str, kind: str, what: str) -> str:
    """A path if it exists, else a bundled name (with or without .yaml)."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    folder = bundled_dir(kind)
    for candidate in (folder / name, folder / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate)
    known = sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))
    raise Hs2Error(f"{what} '{name}': no such file or bundled name (bundled: {', '.join(known)})")


def resolve_recipe(name: str) -> str:
    return _resolve(name, "recipes", "recipe")


def resolve_accelerate_config(name: str) -> str:
    return _resolve(name, "accelerate_configs", "accelerate config")


def list_bundled(kind: str) -> list[str]:
    folder = bundled_dir(kind)
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


# Recipe file name -> the stage module that reads it: `recipes/<experiment>/<name>[-variant].yaml`. A recipe may also
# name its stage in a comment line `# stage: <module>`. Every bundled recipe must map to a stage (tests check it).
RECIPE_STAGES = {
    "rm": "train_rm", "annotate": "annotate", "sft": "sft", "dpo": "dpo", "iterative-dpo": "iterative_dpo",
    "ppo": "ppo", "steerlm": "steerlm", "steerlm2": "steerlm2", "eval-policy": "eval_policy",
    "rloo": "rloo", "reinforce": "rloo", "grpo": "grpo",
}


def recipe_stage(path: str) -> str | None:
    """The stage module name (in hs2trl.stages) for a recipe file, or None when its name maps to no stage."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                m = re.match(r"#\s*stage:\s*([A-Za-z0-9_]+)\s*$", line)
                if m:
                    return m.group(1)
    except OSError:
        pass
    stem = Path(path).stem.replace("_", "-")
    matches = [k for k in RECIPE_STAGES if stem == k or stem.startswith(k + "-")]
    return RECIPE_STAGES[max(matches, key=len)] if matches else None


def recipe_description(path: str) -> str:
    """The first comment line of a recipe or accelerate config (its one-line description)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                return line.lstrip("#").strip()
            if line.strip():
                break
    return ""



# ------------------------------------------------------------------------------------------- a recipe's `launch:`
#
#   launch:
#     config_file: multinode_zero3   # a bundled accelerate config name, or a path (relative: to the recipe's folder)
#     num_processes: 32              # every process of the run, all machines together (as accelerate counts them)
#     num_machines: 4
#
# The keys are `accelerate launch` option names; accelerate's own launch parser checks each value.

# accelerate launch options a recipe cannot carry: the first differ from node to node (each node gives its own, e.g.
# make's LAUNCH="--machine_rank R --main_process_ip HEAD_IP"); hs2 sets the others itself.
PER_NODE_OPTIONS = ("machine_rank", "main_process_ip")
HS2_OPTIONS = ("module", "no_python", "help")


@dataclass(frozen=True)
class LaunchSettings:
    """A recipe's `launch:`, checked: how `hs2` starts the recipe's stage where the command line does not say."""

    recipe: str
    config_file: str | None = None  # the accelerate config, resolved to a file
    num_processes: int | None = None
    options: dict[str, list[str]] = field(default_factory=dict)  # every other option: name -> its launch arguments

    def option_args(self, skip=()) -> list[str]:
        """The other options as accelerate launch arguments, less those named in `skip`."""
        return [token for key, tokens in self.options.items() if key not in skip for token in tokens]


def recipe_launch(path: str) -> LaunchSettings | None:
    """The recipe's `launch:` mapping, checked (one-line `Hs2Error`s naming the file and the key); None without one."""
    launch = _launch_mapping(path)
    if launch is None:
        return None
    parser = _launch_parser()
    known = _launch_options(parser)
    tokens = {key: _launch_option(path, parser, known, key, value) for key, value in launch.items()}
    _check_topology(path, launch)
    config_file = _launch_config_file(path, launch["config_file"]) if "config_file" in launch else None
    num_processes = int(launch["num_processes"]) if "num_processes" in launch else None
    options = {k: v for k, v in tokens.items() if k not in ("config_file", "num_processes")}
    return LaunchSettings(path, config_file, num_processes, options)


def _launch_mapping(path: str) -> dict | None:
    """The recipe's `launch:` as a mapping; None when the recipe has none (or cannot be read: the stage's own parse
    reports that)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(recipe, dict) or recipe.get("launch") is None:
        return None
    if not isinstance(recipe["launch"], dict):
        raise Hs2Error(f"{path}: launch: expected a mapping of accelerate launch options (e.g. num_processes: 8), "
                       f"got {recipe['launch']!r}")
    return recipe["launch"]


def _launch_parser():
    """accelerate's own `accelerate launch` parser, made to raise its message instead of printing usage and exiting."""
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()

    def fail(message: str):
        raise ValueError(message)

    parser.error = fail
    return parser


def _launch_options(parser) -> dict:
    """accelerate launch option name (the underscore spelling, `num_processes`) -> its argparse action."""
    return {opt[2:]: action for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and "-" not in opt[2:]}


def _launch_option(path: str, parser, known: dict, key, value) -> list[str]:
    """One `launch:` entry as accelerate launch arguments, once it is an option a recipe may set with a value that
    accelerate's parser accepts."""
    where_ = f"{path}: launch.{key}"
    if key in PER_NODE_OPTIONS:
        raise Hs2Error(f"{where_}: differs from node to node, so a recipe cannot carry it: give it on each node in "
                       f"--launcher-args (make: LAUNCH=\"--machine_rank R --main_process_ip HEAD_IP\")")
    if key in HS2_OPTIONS:
        raise Hs2Error(f"{where_}: hs2 sets this accelerate launch option itself")
    if key not in known:
        close = difflib.get_close_matches(str(key), list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise Hs2Error(f"{path}: launch: unknown key '{key}'{hint}: the keys are `accelerate launch` options "
                       f"(num_processes, num_machines, config_file, ...)")
    flag = known[key].nargs == 0
    if flag and not isinstance(value, bool):
        raise Hs2Error(f"{where_}: a flag: expected true or false, got {value!r}")
    if value is None or isinstance(value, (list, dict)):
        raise Hs2Error(f"{where_}: expected one value, got {value!r}")
    tokens = ([f"--{key}"] if value else []) if flag else [f"--{key}", _yaml_text(value)]
    if key != "config_file":  # a bundled name or a path: `_launch_config_file` resolves it
        try:
            parser.parse_args([*tokens, "script.py"])  # as `accelerate launch` itself would read the option
        except ValueError as err:
            raise Hs2Error(f"{where_}: accelerate launch: {first_line(err)}") from None
    return tokens


def _yaml_text(value) -> str:
    """A YAML scalar as a command-line value: booleans as YAML writes them (true/false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_topology(path: str, launch: dict) -> None:
    """Counts of 1 or more, and as many processes on every machine (accelerate starts num_processes / num_machines on
    each)."""
    counts = {key: int(launch[key]) for key in ("num_processes", "num_machines") if key in launch}
    for key, count in counts.items():
        if count < 1:
            raise Hs2Error(f"{path}: launch.{key}: expected 1 or more, got {count}")
    processes, machines = counts.get("num_processes"), counts.get("num_machines", 1)
    if processes is not None and processes % machines:
        raise Hs2Error(f"{path}: launch.num_processes: {processes} processes do not divide over num_machines "
                       f"{machines} (num_processes counts the processes of all machines together)")


def _launch_config_file(path: str, name) -> str:
    """`launch.config_file`: a file beside the recipe, else whatever `--accelerate-config` takes (a path or a
    bundled name)."""
    beside = Path(path).parent / str(name)
    if not os.path.isabs(str(name)) and beside.is_file():
        return str(beside.resolve())
    try:
        return resolve_accelerate_config(str(name))
    except Hs2Error as err:
        raise Hs2Error(f"{path}: launch.config_file: {err}") from None
