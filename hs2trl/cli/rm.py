"""Reward-model training: `hs2 train-rm`, and `hs2 expo` (model extrapolation) (the commands that use a trained RM
are in use.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from hs2trl.cli.app import (
    PASSTHROUGH,
    AccelerateConfig,
    Dataset,
    DryRun,
    HubModelId,
    LauncherArgs,
    Model,
    NumProcesses,
    OutputDir,
    PushToHub,
    Resume,
    app,
    config_option,
    launch_stage,
    stage_args,
)
from hs2trl.runtime.errors import Hs2Error, exit_on_user_error


@app.command("train-rm", context_settings=PASSTHROUGH)
def train_rm(
    ctx: typer.Context,
    config: config_option("llama3-70b/rm") = None,
    model: Model = None,
    dataset: Dataset = None,
    output_dir: OutputDir = None,
    accelerate_config: AccelerateConfig = None,
    num_processes: NumProcesses = None,
    launcher_args: LauncherArgs = None,
    push_to_hub: PushToHub = False,
    hub_model_id: HubModelId = None,
    resume: Resume = False,
    dry_run: DryRun = False,
    loss: Annotated[str | None, typer.Option("--loss", help=(
        "regression (HelpSteer rows), or bt, margin_bt, scaled_bt (preference pairs: HelpSteer2-/HelpSteer3-"
        "Preference or chosen/rejected rows). Unset: regression for HelpSteer rows, TRL's Bradley-Terry for "
        "chosen/rejected rows."))] = None,
    init_head: Annotated[str | None, typer.Option("--init-head", help=(
        "With a pairwise --loss from a k-output RM: the output to start from (e.g. helpfulness), or a weight preset "
        "that folds the heads into one (e.g. goodness)."))] = None,
) -> None:
    """Train a SteerLM regression reward model (5 attributes), or a Bradley-Terry RM on preference pairs.

    With no arguments: the demo recipe (SmolLM2-135M-Instruct on the built-in HelpSteer2-format sample).
    Further `--key value` pairs set any field of the recipe, e.g. `--max_steps 3`.
    """
    args = stage_args(
        config or "demo/rm",
        ctx.args,
        model_name_or_path=model,
        dataset_name=dataset,
        output_dir=output_dir,
        push_to_hub=push_to_hub,
        hub_model_id=hub_model_id,
        resume=resume,
        loss=loss,
        init_head=init_head,
    )
    launch_stage("train_rm", args, accelerate_config, num_processes, launcher_args, dry_run)


@app.command("expo")
def expo(
    base: Annotated[str | None, typer.Option(
        "--base", help="Model A, the one B was trained from: local folder, Hub id, or pkg: name.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model B, the trained one: local folder, Hub id, or pkg: name (the output gets its config, "
                        "tokenizer and dtype).")] = None,
    alpha: Annotated[str | None, typer.Option("--alpha", help="Write B + alpha·(B - A), e.g. 0.5.")] = None,
    alphas: Annotated[str | None, typer.Option(
        "--alphas", help="Candidates, e.g. 0.1,0.3,0.5: each is scored on --eval-dataset with B itself (alpha 0), "
                         "and the best is kept.")] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Folder for the model (and expo.json); candidates go to OUTPUT/alpha-<a>/ meanwhile.")
    ] = None,
    eval_dataset: Annotated[str | None, typer.Option(
        "--eval-dataset", help="Preference pairs to pick alpha by (HelpSteer2-/HelpSteer3-Preference or "
                               "chosen/rejected rows): local file or Hub id.")] = None,
    eval_split: Annotated[str, typer.Option(
        "--eval-split", help="Split of a Hub --eval-dataset, or the rows whose `split` column names it (as "
                             "HelpSteer2-Preference's).")] = "validation",
    max_rows: Annotated[int | None, typer.Option("--max-rows", help="Use only the first N rows of the pairs.")] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", "-w", help="For a multi-attribute RM: a preset or one number per output (a 1-output RM is "
                                "scored directly).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 8,
    dtype: Annotated[str, typer.Option("--dtype", help="Scoring dtype: float32, bfloat16, float16 or auto.")] = (
        "float32"),
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")] = None,
    device_map: Annotated[str | None, typer.Option(
        "--device-map", help="'auto': split the RM over all GPUs when scoring.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the model (and candidate folders) an earlier run left in --output.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check the options, print what would be done and exit (reads no model).")] = False,
) -> None:
    """ExPO, model extrapolation (arXiv 2404.16792): every floating-point tensor of the output is
    B + alpha·(B - A), computed in float32 and saved in B's dtype, one safetensors shard of B at a time; other
    tensors are B's. With --alphas and --eval-dataset, the alpha with the best pairwise accuracy is kept."""
    exit_on_user_error(_expo)(base, model, alpha, alphas, output, eval_dataset, eval_split, max_rows, weights,
                              batch_size, dtype, device, device_map, overwrite, dry_run)


def _expo(base, model, alpha, alphas, output, eval_dataset, eval_split, max_rows, weights, batch_size, dtype, device,
          device_map, overwrite, dry_run) -> None:
    from hs2trl.rm import expo as expo_
    from hs2trl.runtime.locks import output_lock
    from hs2trl.runtime.say import say

    for value, flag in ((base, "--base"), (model, "--model"), (output, "--output")):
        if not value:
            raise Hs2Error(f"expo: {flag} is required")
    if (alpha is None) == (alphas is None):
        raise Hs2Error("expo: give either --alpha (one model) or --alphas with --eval-dataset (pick the best)")
    if alphas is not None and not eval_dataset:
        raise Hs2Error("expo: --alphas needs --eval-dataset (the preference pairs that pick the best alpha)")
    candidates = expo_.parse_alphas(alpha if alpha is not None else alphas, "--alpha" if alpha is not None else
                                    "--alphas")
    if alpha is not None and len(candidates) > 1:
        raise Hs2Error(f"expo: --alpha takes one number ('{alpha}'); use --alphas for several")
    what = f"write {output} = {model} + alpha·({model} - {base}) for alpha " + ", ".join(map(expo_.alpha_name,
                                                                                              candidates))
    if dry_run:
        print(f"hs2: dry run: {what}" + (f", scored on {eval_dataset}" if eval_dataset else ""), flush=True)
        return
    scoring = None
    if eval_dataset:
        pairs, stats = expo_.read_pairs(eval_dataset, eval_split, max_rows)
        rows = f"{stats['rows']} rows" + (f" of split '{stats['split']}'" if stats["split"] else "")
        say(f"{eval_dataset}: {len(pairs)} preference pairs from {rows} ({stats['ties_dropped']} ties dropped)")
        scoring = expo_.Scoring(pairs, eval_dataset, stats, weights, batch_size, dtype, device, device_map)
    with output_lock(output, "expo"):
        result = expo_.run_expo(base, model, candidates, output, scoring, select=alphas is not None,
                                overwrite=overwrite)
        _expo_card(output, result)
    if result["table"]:
        expo_.print_table(result)
    tensors = result["tensors"]
    if result["alpha"] == 0:
        say(f"wrote {output}: --model unchanged (alpha 0 scored best), {tensors['shards']} shard(s)")
        return
    say(f"wrote {output} (alpha {expo_.alpha_name(result['alpha'])}): {tensors['extrapolated']} floating-point "
        f"tensors extrapolated, {tensors['copied']} non-float tensors copied from --model unchanged, "
        f"{tensors['shards']} shard(s); {output}/{expo_.RESULT_FILE} says how")


def _expo_card(output: str, result: dict) -> None:
    """The hs2trl model card, with how the model was made appended."""
    from pathlib import Path

    from hs2trl.hub.card import write_model_card
    from hs2trl.rm.expo import card_section

    card = write_model_card(output, base_model=result["model"], stage="expo")
    Path(card).write_text(Path(card).read_text(encoding="utf-8").rstrip("\n") + "\n\n" + card_section(result),
                          encoding="utf-8")
