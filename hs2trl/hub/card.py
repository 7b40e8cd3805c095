"""The hs2trl model card (README.md) of an output folder, rendered from the template `model_card.md`.

As TRL's `generate_model_card`: the values are gathered here and `huggingface_hub.ModelCard.from_template` renders
them, with `ModelCardData` as the YAML front matter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hs2trl.hub.folders import (
    CARD_FILE,
    HUB_ID,
    RECIPE_FILE,
    eval_results,
    hub_base_model,
    public_recipe,
    read_json,
    read_recipe,
    read_recipe_stage,
)

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

CARD_MARKER = "<!-- hs2trl model card -->"
CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
_STAGE_TAGS = {
    "train_rm": ["reward-model", "steerlm"], "sft": ["sft"], "dpo": ["dpo"], "iterative_dpo": ["dpo", "iterative-dpo"],
    "ppo": ["ppo", "rlhf"], "steerlm": ["steerlm"], "steerlm2": ["steerlm", "steerlm2"],
    "rloo": ["rloo", "reinforce", "rlhf"], "grpo": ["grpo", "rlhf"],
}


def write_model_card(
    folder: str | os.PathLike,
    *,
    hub_model_id: str | None = None,
    revision: str | None = None,
    base_model: str | None = None,
    stage: str | None = None,
    recipe: dict[str, Any] | None = None,
    weights: Any = None,
    overwrite: bool = True,
) -> Path:
    """Write `folder/README.md`: YAML front matter (library_name, tags, base_model when known, datasets), the
    attributes (config.id2label), the weight presets and the weights used, the recipe, eval results when present,
    and how to load the model. Values not given are read from the folder (config.json, hs2trl_recipe.yaml,
    *results.json). Returns the card's path; with overwrite=False an existing card is kept."""
    from huggingface_hub import ModelCard

    from hs2trl import __version__
    from hs2trl.rm.attributes import ATTRIBUTES

    folder = Path(folder)
    card_path = folder / CARD_FILE
    if card_path.exists() and not overwrite:
        return card_path
    config = read_json(folder / "config.json")
    recipe = dict(recipe) if recipe is not None else read_recipe(folder)
    stage = stage or read_recipe_stage(folder)
    is_rm = _is_reward_model(config)
    is_adapter = not config and (folder / "adapter_config.json").is_file()
    attributes = _reward_attributes(config) if is_rm else []
    base = hub_base_model(base_model or recipe.get("model_name_or_path"))
    shown = public_recipe(recipe)  # the card is pushed: local paths appear by file name
    repo = hub_model_id or folder.resolve().name
    card = ModelCard.from_template(
        _card_data(stage, is_rm, is_adapter, attributes, base, recipe.get("dataset_name")),
        template_path=str(CARD_TEMPLATE),
        card_marker=CARD_MARKER,
        repo=repo,
        kind=_model_kind(is_rm, attributes),
        hs2trl_version=__version__,
        stage=stage,
        base_model=base,
        dataset=shown.get("dataset_name"),
        is_reward_model=is_rm,
        is_adapter=is_adapter,
        attributes=attributes,
        steered_attributes=[] if is_rm else list(recipe.get("attributes") or []),
        preset_attributes=ATTRIBUTES,
        presets=_presets(),
        weights_used=_weights_used(recipe, config, weights),
        recipe_file=RECIPE_FILE,
        recipe_yaml=_recipe_yaml(shown) if recipe else None,
        eval_results=_eval_tables(folder, attributes),
        paper_attributes=attributes == list(ATTRIBUTES),  # the paper's goodness formula applies
        load_args=_load_args(repo, revision),
        versions=_versions(),
    )
    card.save(card_path)
    return card_path


def has_own_card(folder: str | os.PathLike) -> bool:
    path = Path(folder) / CARD_FILE
    return path.is_file() and CARD_MARKER in path.read_text(encoding="utf-8", errors="replace")


# ------------------------------------------------------------------------------------------ values for the template


def _is_reward_model(config: dict) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def _reward_attributes(config: dict) -> list[str]:
    """A reward model's outputs by name (config.id2label, in order); none for a 1-output (scalarised) one."""
    id2label = config.get("id2label") or {}
    num_labels = len(id2label) or config.get("num_labels", 0)
    names = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)]
    return [] if all(name.startswith("LABEL_") for name in names) else names


def _model_kind(is_rm: bool, attributes: list[str]) -> str:
    if is_rm:
        return "SteerLM multi-attribute reward model" if attributes else "reward model"
    return "language model"


def _tags(stage: str | None, is_rm: bool, attributes: list[str]) -> list[str]:
    tags = ["hs2trl", "trl", *_STAGE_TAGS.get(stage or "", []), *(["reward-model"] if is_rm else [])]
    if is_rm and attributes:
        tags.append("steerlm")
    return list(dict.fromkeys(tags))  # each tag once, where it first came


def _card_data(
    stage: str | None, is_rm: bool, is_adapter: bool, attributes: list[str], base_model: str | None, dataset: Any
) -> ModelCardData:
    """The front matter. A local base model or data file is left out: the Hub rejects or cannot link it."""
    from huggingface_hub import ModelCardData

    on_hub = isinstance(dataset, str) and HUB_ID.match(dataset) and not os.path.exists(dataset)
    return ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        tags=_tags(stage, is_rm, attributes),
        base_model=base_model,
        datasets=[dataset] if on_hub else None,
        pipeline_tag="text-classification" if is_rm else "text-generation",
    )


def _presets() -> dict[str, list[str]]:
    """The weight presets, one formatted weight per attribute."""
    from hs2trl.rm.attributes import WEIGHT_PRESETS

    return {name: [f"{w:g}" for w in weights] for name, weights in WEIGHT_PRESETS.items()}


def _weights_used(recipe: dict, config: dict, weights: Any) -> dict[str, Any]:
    """Weight settings the run used (recipe keys like `weights`, `reward_weights`; config keys from an export), and
    `weights` when the caller gives them (shown as given)."""
    from hs2trl.rm.attributes import WEIGHT_PRESETS

    used = {}
    for source in (recipe, config):
        for key, value in source.items():
            if "weight" in key and key not in ("weight_decay",) and isinstance(value, (str, list, tuple)) and value:
                if isinstance(value, str) and value in WEIGHT_PRESETS:
                    value = f"{value} = {list(WEIGHT_PRESETS[value])}"
                used[key] = value
    if weights is not None:
        used["weights"] = weights
    return used


def _recipe_yaml(recipe: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip()


def _eval_tables(folder: Path, attributes: list[str]) -> list[dict[str, Any]]:
    """One entry per results file: its per-attribute MSE and Pearson r (for the attributes it scores) and all its
    metrics, formatted."""
    tables = []
    for file, metrics in eval_results(folder).items():
        scored = [a for a in attributes if f"eval_mse_{a}" in metrics or f"eval_pearson_{a}" in metrics]
        per_attribute = [(a, _fmt(metrics.get(f"eval_mse_{a}", float("nan"))),
                          _fmt(metrics.get(f"eval_pearson_{a}", float("nan")))) for a in scored]
        tables.append({"file": file, "per_attribute": per_attribute,
                       "metrics": {name: _fmt(value) for name, value in metrics.items()}})
    return tables


def _fmt(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4f}"
    return str(int(value)) if isinstance(value, float) and value == value else str(value)


def _load_args(repo: str, revision: str | None) -> str:
    """The arguments of `from_pretrained` in the card's loading example."""
    return f'"{repo}", revision="{revision}"' if revision else f'"{repo}"'


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hs2trl", "trl", "transformers", "torch", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
