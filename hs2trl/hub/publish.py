"""The end of a training stage: the recipe file and model card beside the model, then the Hub push."""

from __future__ import annotations

import os

from hs2trl.runtime.process import is_main_process
from hs2trl.runtime.say import say


def take_push_settings(training_args) -> tuple[bool, str | None]:
    """Training never talks to the Hub (a network failure must not kill a run): push only after saving locally.

    A `hub_token` moves to this process's environment (HF_TOKEN, where the push reads it) and is cleared from the
    arguments before the trainer exists: the Trainer pickles its arguments into training_args.bin (the final folder
    and every checkpoint), and a token must never be saved."""
    push, hub_id = training_args.push_to_hub, training_args.hub_model_id
    training_args.push_to_hub = False
    token = getattr(training_args, "hub_token", None)
    if token:
        os.environ["HF_TOKEN"] = token
        training_args.hub_token = None
    if push and not hub_id:
        hub_id = os.path.basename(os.path.normpath(training_args.output_dir))
    return push, hub_id


def push_after_training(folder: str, push: bool, hub_model_id: str | None, revision: str | None = None) -> None:
    if not (push and is_main_process()):
        return
    from hs2trl.hub.push import push_folder

    url = push_folder(folder, hub_model_id, revision=revision)
    say(f"pushed {folder} to {hub_model_id} ({url})")


# Keys that describe one run, not the recipe: never written to hs2trl_recipe.yaml (a replayed recipe must not push,
# resume or carry a token).
RUN_ONLY_KEYS = {"resume", "push_to_hub", "hub_model_id", "hub_token", "hub_revision", "config"}


def _plain(value):
    """A YAML-safe value: enums by value, tuples as lists, anything else unusual as its string."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def recipe_values(parsed_args) -> dict:
    """The settings of a run as a recipe: every key set in the recipe or on the command line (as parsed), or, for
    objects not made by parse_stage_args, every field that differs from its default."""
    from dataclasses import MISSING, fields, is_dataclass

    values: dict = {}
    for obj in parsed_args:
        if not is_dataclass(obj):
            continue
        explicit = getattr(obj, "_hs2_explicit", None)
        for f in fields(obj):
            if not f.init or f.name in RUN_ONLY_KEYS or f.name in values:
                continue
            value = getattr(obj, f.name, None)
            if explicit is not None:
                if f.name not in explicit:
                    continue
            else:
                default = f.default if f.default is not MISSING else (
                    f.default_factory() if f.default_factory is not MISSING else MISSING)
                if _plain(value) == _plain(default):
                    continue
            values[f.name] = _plain(value)
    return values


def save_recipe(output_dir: str, parsed_args, stage: str) -> str | None:
    """Write output_dir/hs2trl_recipe.yaml: the run's settings as a recipe that `--config` accepts again (main process
    only). The first line names the stage (the model card reads it)."""
    import yaml

    from hs2trl.hub.folders import RECIPE_FILE

    if not is_main_process():
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RECIPE_FILE)
    header = f"# hs2trl stage: {stage}\n# The settings of this run; rerun with: --config {RECIPE_FILE}\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + yaml.safe_dump(recipe_values(parsed_args), sort_keys=False, allow_unicode=True))
    return path


def write_run_card(output_dir: str, parsed_args, stage: str, hub_model_id: str | None = None,
                   revision: str | None = None) -> None:
    """Recipe file + model card for a finished output folder (main process only)."""
    if not is_main_process():
        return
    from hs2trl.hub.card import write_model_card

    save_recipe(output_dir, parsed_args, stage)
    write_model_card(output_dir, hub_model_id=hub_model_id, revision=revision, stage=stage)


def finish_training(trainer, output_dir: str, parsed_args, stage: str, push: bool, hub_model_id: str | None,
                    revision: str | None = None, save: bool = True) -> None:
    """The end of a training stage (trainer may be None with save=False): save the model (unless the stage saved it
    itself), write the recipe and the model card, then push when asked. A failed push leaves everything local in
    place and exits 2 with the retry command."""
    if save:
        trainer.save_model(output_dir)
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    write_run_card(output_dir, parsed_args, stage, hub_model_id if push else None, revision)
    push_after_training(output_dir, push, hub_model_id, revision)
