"""Operational commands: push a finished folder to the Hub (and retry a failed push), write its model card, list the
bundled recipes and accelerate configs, show where an interrupted run stands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from hs2trl.cli.app import app
from hs2trl.runtime.errors import Hs2Error, exit_on_user_error
from hs2trl.runtime.locks import output_lock, read_holder

Folder = Annotated[str, typer.Argument(
    metavar="FOLDER", help="An output folder of an hs2 command (or one of its checkpoint-N folders).")]


@app.command("push")
@exit_on_user_error
def push(
    folder: Folder,
    hub_model_id: Annotated[str, typer.Option("--hub-model-id", help="Hub repo id, e.g. me/helpsteer2-rm.")],
    revision: Annotated[str | None, typer.Option(
        "--revision", help="Push to this branch (created from main if needed), e.g. round-2.")] = None,
    commit_message: Annotated[str, typer.Option(
        "--commit-message", help="Commit message on the Hub.")] = "hs2trl upload",
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    rewrite_card: Annotated[bool, typer.Option(
        "--rewrite-card", help="Rewrite README.md even if it is hs2trl's card.")] = False,
) -> None:
    """Push a saved model folder to the Hugging Face Hub: the retry for a failed `--push-to-hub`.

    Writes the model card (README.md) first when the folder has none. Checkpoint sub-folders, optimizer and RNG
    state and training_args.bin are not uploaded; the card and recipe name local files by their file name. Exit
    status 2 with one line when the push fails; the local folder is never changed otherwise.
    """
    from hs2trl.hub.card import write_model_card
    from hs2trl.hub.folders import check_push_folder
    from hs2trl.hub.push import push_folder

    check_push_folder(folder)
    with output_lock(folder, "push"):  # not while a run writes it (and the card may be written first)
        if rewrite_card:
            write_model_card(folder, hub_model_id=hub_model_id, revision=revision)
        url = push_folder(folder, hub_model_id, revision=revision, commit_message=commit_message,
                          private=private or None)
    typer.echo(f"hs2: pushed {folder} to {hub_model_id}{f' (branch {revision})' if revision else ''}: {url}")


@app.command("card")
@exit_on_user_error
def card(
    folder: Folder,
    hub_model_id: Annotated[str | None, typer.Option(
        "--hub-model-id", help="Repo id used in the loading example.")] = None,
    revision: Annotated[str | None, typer.Option(
        "--revision", help="Branch named in the card's loading example (revision=...); nothing is pushed.")] = None,
    base_model: Annotated[str | None, typer.Option(
        "--base-model", help="Hub id of the starting model (front matter).")] = None,
) -> None:
    """Write (or rewrite) the model card README.md of a saved model folder, without pushing.

    The card has the attributes (config.id2label), the weight presets and the weights used, the recipe
    (hs2trl_recipe.yaml), the evaluation results (*results.json) and how to load the model.
    """
    from hs2trl.hub.card import write_model_card
    from hs2trl.hub.folders import check_push_folder

    check_push_folder(folder)
    with output_lock(folder, "card"):
        path = write_model_card(folder, hub_model_id=hub_model_id, revision=revision, base_model=base_model)
    typer.echo(f"hs2: wrote {path}")


@app.command("recipes")
@exit_on_user_error
def recipes() -> None:
    """List the bundled recipes (with the stage that reads each) and accelerate configs, with their descriptions."""
    from rich.console import Console
    from rich.table import Table

    from hs2trl.runtime.recipes import bundled_dir, recipe_description, recipe_stage

    console = Console()
    table = Table(title="Recipes (--config NAME)")
    for column in ("name", "stage", "description"):
        table.add_column(column)
    folder = bundled_dir("recipes")
    for path in sorted(folder.rglob("*.yaml")):
        table.add_row(str(path.relative_to(folder).with_suffix("")), recipe_stage(str(path)) or "?",
                      recipe_description(str(path)))
    console.print(table)
    table = Table(title="Accelerate configs (--accelerate-config NAME)")
    table.add_column("name")
    table.add_column("description")
    folder = bundled_dir("accelerate_configs")
    for path in sorted(folder.rglob("*.yaml")):
        table.add_row(str(path.relative_to(folder).with_suffix("")), recipe_description(str(path)))
    console.print(table)


@app.command("status")
@exit_on_user_error
def status(folder: Folder) -> None:
    """Where a training run stands: finished or not, its checkpoints (complete or cut off), the step reached, and
    the command that continues it."""
    from hs2trl.hub.folders import RECIPE_FILE
    from hs2trl.runtime.outputs import checkpoint_dirs, is_model_folder
    from hs2trl.runtime.resume import checkpoint_is_complete

    path = Path(folder)
    if not path.is_dir():
        raise Hs2Error(f"{folder}: no such folder")
    checkpoints = checkpoint_dirs(path)
    finished = is_model_folder(path)
    if not finished and not checkpoints:
        raise Hs2Error(f"{folder}: neither a model nor a training output folder (no config.json, no checkpoint-N)")
    for ckpt in checkpoints:
        if checkpoint_is_complete(str(ckpt)):
            state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
            typer.echo(f"{ckpt.name}: step {state.get('global_step')} of {state.get('max_steps')}, "
                       f"epoch {state.get('epoch') or 0:.2f}")
        else:
            typer.echo(f"{ckpt.name}: incomplete (cut off while saving; --resume skips and removes it)")
    if finished:
        typer.echo(f"{folder}: finished (final model saved)"
                   + (f"; recipe in {RECIPE_FILE}" if (path / RECIPE_FILE).exists() else ""))
    else:
        typer.echo(f"{folder}: not finished: rerun the same command with --resume to continue")
    holder = read_holder(path)
    if holder is not None:
        typer.echo(f"{folder}: in use by {holder.describe()} (or left by a run that is gone)")
    if not os.access(path, os.W_OK):
        typer.echo(f"{folder}: warning: not writable")
