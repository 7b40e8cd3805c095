"""Reward-model training: `hs2 train-rm` (the commands that use a trained RM are in use.py)."""

from __future__ import annotations

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
) -> None:
    """Train a SteerLM regression reward model (5 attributes), or a Bradley-Terry RM on chosen/rejected pairs.

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
    )
    launch_stage("train_rm", args, accelerate_config, num_processes, launcher_args, dry_run)
