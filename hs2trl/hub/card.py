"""The hs2trl model card (README.md) of an output folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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

CARD_MARKER = "<!-- hs2trl model card -->"
_STAGE_TAGS = {
    "train_rm": ["reward-model", "steerlm"], "sft": ["sft"], "dpo": ["dpo"], "iterative_dpo": ["dpo", "iterative-dpo"],
    "ppo": ["ppo", "rlhf"], "steerlm": ["steerlm"], "steerlm2": ["steerlm", "steerlm2"],
    "rloo": ["rloo", "reinforce", "rlhf"], "grpo": ["grpo", "rlhf"],
}


def _weights_used(recipe: dict, config: dict) -> dict[str, Any]:
    """Weight settings the run used (recipe keys like `weights`, `reward_weights`; config keys from an export)."""
    from hs2trl.rm.attributes import WEIGHT_PRESETS

    used = {}
    for source in (recipe, config):
        for key, value in source.items():
            if "weight" in key and key not in ("weight_decay",) and isinstance(value, (str, list, tuple)) and value:
                if isinstance(value, str) and value in WEIGHT_PRESETS:
                    value = f"{value} = {list(WEIGHT_PRESETS[value])}"
                used[key] = value
    return used


def _front_matter(meta: dict) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _fmt(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4f}"
    return str(int(value)) if isinstance(value, float) and value == value else str(value)


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
    from hs2trl import __version__
    from hs2trl.rm.attributes import ATTRIBUTES, WEIGHT_PRESETS

    folder = Path(folder)
    card_path = folder / CARD_FILE
    if card_path.exists() and not overwrite:
        return card_path
    config = read_json(folder / "config.json")
    recipe = dict(recipe) if recipe is not None else read_recipe(folder)
    stage = stage or read_recipe_stage(folder)
    architectures = config.get("architectures") or []
    is_rm = any(a.endswith("ForSequenceClassification") for a in architectures)
    is_adapter = not config and (folder / "adapter_config.json").is_file()
    num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 0)
    id2label = config.get("id2label") or {}
    attributes = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)] if is_rm else []
    if is_rm and attributes and all(a.startswith("LABEL_") for a in attributes):
        attributes = []  # a 1-output (scalarised) reward model has no named attributes
    steered = list(recipe.get("attributes") or []) if not is_rm else []
    base = hub_base_model(base_model or recipe.get("model_name_or_path"))
    dataset = recipe.get("dataset_name")
    shown = public_recipe(recipe)  # the card is pushed: local paths appear by file name
    repo = hub_model_id or folder.resolve().name

    tags = ["hs2trl", "trl"]
    for tag in _STAGE_TAGS.get(stage or "", []) + (["reward-model"] if is_rm else []):
        if tag not in tags:
            tags.append(tag)
    if is_rm and attributes and "steerlm" not in tags:
        tags.append("steerlm")
    meta: dict[str, Any] = {"library_name": "peft" if is_adapter else "transformers", "tags": tags}
    if base:
        meta["base_model"] = base
    if isinstance(dataset, str) and HUB_ID.match(dataset) and not os.path.exists(dataset):
        meta["datasets"] = [dataset]
    meta["pipeline_tag"] = "text-classification" if is_rm else "text-generation"

    kind = "SteerLM multi-attribute reward model" if is_rm and attributes else "reward model" if is_rm else "language model"
    lines = [_front_matter(meta), CARD_MARKER, "", f"# {repo}", ""]
    intro = f"A {kind} trained with hs2trl {__version__} on TRL"
    intro += f" (stage `{stage}`)" if stage else ""
    intro += f", starting from `{base}`" if base else ""
    intro += f", on `{shown.get('dataset_name')}`" if dataset else ""
    lines += [intro + ". It follows the HelpSteer2 paper (arXiv 2406.08673).", ""]

    if attributes:
        lines += ["## Attributes", "", "One output per attribute, in this order (`config.id2label`), on the HelpSteer2 "
                  "0-4 scale:", "", "| output | attribute |", "|---|---|"]
        lines += [f"| {i} | {name} |" for i, name in enumerate(attributes)]
        lines.append("")
    elif is_rm:
        lines += ["## Output", "", "One scalar reward (a weighted sum of attribute predictions folded into one head, "
                  "or a Bradley-Terry reward).", ""]
    if steered:
        lines += ["## Attributes", "", f"Trained to follow the attribute values in the prompt: {', '.join(steered)} "
                  "(0-4 each).", ""]

    used = _weights_used(recipe, config)
    if weights is not None:
        used["weights"] = weights
    if attributes or used:
        lines += ["## Weights", "", "Turning the attribute predictions into one reward is a weighted sum. Presets:", "",
                  f"| preset | {' | '.join(ATTRIBUTES)} |", "|---|" + "---|" * len(ATTRIBUTES)]
        lines += [f"| {name} | {' | '.join(f'{w:g}' for w in ws)} |" for name, ws in WEIGHT_PRESETS.items()]
        lines += ["", "`goodness` (paper §4.3) is the reward of iterative DPO and PPO; the `rewardbench-*` presets are "
                  "the paper's RewardBench weights."]
        if used:
            lines += ["", "Weights used by this run:", ""] + [f"- `{k}`: {v}" for k, v in used.items()]
        lines.append("")

    if recipe:
        import yaml

        lines += ["## Recipe", "", f"The settings this model was trained with (also in `{RECIPE_FILE}`; rerun with "
                  f"`--config {RECIPE_FILE}`):", "", "```yaml",
                  yaml.safe_dump(shown, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]

    results = eval_results(folder)
    if results:
        lines += ["## Evaluation results", ""]
        for name, metrics in results.items():
            per_attribute = [a for a in attributes if f"eval_mse_{a}" in metrics or f"eval_pearson_{a}" in metrics]
            if per_attribute:
                lines += [f"Per attribute (`{name}`):", "", "| attribute | MSE | Pearson r |", "|---|---|---|"]
                lines += [f"| {a} | {_fmt(metrics.get(f'eval_mse_{a}', float('nan')))} | "
                          f"{_fmt(metrics.get(f'eval_pearson_{a}', float('nan')))} |" for a in per_attribute]
                lines.append("")
            lines += [f"From `{name}`:", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
            lines.append("")

    rev = f', revision="{revision}"' if revision else ""
    lines += ["## How to load it", "", "```python"]
    if is_rm:
        lines += [
            "import torch",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f'model = AutoModelForSequenceClassification.from_pretrained("{repo}"{rev})',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}"{rev})',
            'messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]',
            "# The head reads the end-of-turn token: render with the chat template and end the text on it.",
            "text = tokenizer.apply_chat_template(messages, tokenize=False).rstrip()",
            'inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)',
            "with torch.no_grad():",
            "    scores = model(**inputs).logits[0]",
            "print(dict(zip(model.config.id2label.values(), scores.tolist())))",
        ]
        if attributes == list(ATTRIBUTES):
            lines.append("goodness = 0.65 * scores[0] + 0.8 * scores[1] + 0.45 * scores[2]  # paper §4.3")
    elif is_adapter:
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}"{rev})',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}"{rev})',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}"{rev})',
            'messages = [{"role": "user", "content": "What is 2 + 2?"}]',
            'ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
            "out = model.generate(**ids, max_new_tokens=64)",
            'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        ]
    lines += ["```", "", "## Framework versions", ""] + [f"- {k}: {v}" for k, v in _versions().items()] + [""]
    card_path.write_text("\n".join(lines), encoding="utf-8")
    return card_path


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hs2trl", "trl", "transformers", "torch", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def has_own_card(folder: str | os.PathLike) -> bool:
    path = Path(folder) / CARD_FILE
    return path.is_file() and CARD_MARKER in path.read_text(encoding="utf-8", errors="replace")


