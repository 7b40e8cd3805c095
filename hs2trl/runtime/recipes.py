"""The recipes and accelerate configs that ship with hs2trl: finding them by name, and which stage reads a recipe."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hs2trl.runtime.errors import Hs2Error

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
