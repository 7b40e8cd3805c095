"""Alignment commands (paper §4): sft, dpo (and dpo --iterative), ppo, and `hs2 data to-dpo`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import Hs2Error, exit_on_user_error
from ..locks import output_lock
from .app import (
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
    data_app,
    launch_stage,
    stage_args,
)

RewardModel = Annotated[Optional[str], typer.Option("--reward-model", help="Reward model folder (from `hs2 train-rm`) or Hub id.")]


@app.command("sft", context_settings=PASSTHROUGH)
def sft(
    ctx: typer.Context,
    config: config_option("llama3-70b/sft-daring-anteater") = None,
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
    """Supervised fine-tuning with TRL's SFTTrainer (Daring Anteater, Open Assistant, HelpSteer2 or `messages` rows).

    With no arguments: the demo recipe (SmolLM2-135M-Instruct on the built-in HelpSteer2-format sample).
    Paper recipes: llama3-70b/sft-daring-anteater, llama3-70b/sft-open-assistant.
    """
    args = stage_args(config or "demo/sft", ctx.args, model_name_or_path=model, dataset_name=dataset,
                      output_dir=output_dir, push_to_hub=push_to_hub, hub_model_id=hub_model_id, resume=resume)
    launch_stage("sft", args, accelerate_config, num_processes, launcher_args, dry_run)


@app.command("dpo", context_settings=PASSTHROUGH)
def dpo(
    ctx: typer.Context,
    config: config_option("llama3-70b/dpo, or llama3-70b/iterative-dpo with --iterative") = None,
    model: Model = None,
    dataset: Dataset = None,
    output_dir: OutputDir = None,
    iterative: Annotated[bool, typer.Option("--iterative", help="Iterative DPO: sample, score with the RM, pair best vs worst, train; per round.")] = False,
    reward_model: RewardModel = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="--iterative: number of rounds.")] = None,
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", help="--iterative: responses sampled per prompt.")] = None,
    accelerate_config: AccelerateConfig = None,
    num_processes: NumProcesses = None,
    launcher_args: LauncherArgs = None,
    push_to_hub: PushToHub = False,
    hub_model_id: HubModelId = None,
    resume: Resume = False,
    dry_run: DryRun = False,
) -> None:
    """DPO with TRL's DPOTrainer on preference pairs (from `hs2 data to-dpo`, or HelpSteer2 rows paired on the fly).

    --iterative: each round samples --num-samples responses per prompt from the current policy, scores them with the
    reward model's goodness, keeps the best vs the worst, and trains a DPO round (reference: the original model).
    Everything is kept under OUTPUT/round-N/; a rerun resumes at the first unfinished round. With --accelerate-config /
    --num-processes the DPO rounds run distributed (sampling and scoring stay in one process).
    Paper recipes: llama3-70b/dpo, llama3-70b/iterative-dpo.
    """
    named = dict(model_name_or_path=model, dataset_name=dataset, output_dir=output_dir, push_to_hub=push_to_hub,
                 hub_model_id=hub_model_id)
    if not iterative:
        given = [flag for flag, value in (("--reward-model", reward_model), ("--rounds", rounds),
                                          ("--num-samples", num_samples)) if value is not None]
        if given:
            _fail(f"{', '.join(given)}: only with --iterative")
        args = stage_args(config or "demo/dpo", ctx.args, resume=resume, **named)
        launch_stage("dpo", args, accelerate_config, num_processes, launcher_args, dry_run)
        return
    # A rerun always continues at the first unfinished round: --resume is accepted (Ctrl-C's message names it) and
    # changes nothing.
    # `--key=value`: launcher arguments start with "--" themselves
    extra = [*ctx.args, *([f"--round_launcher_args={launcher_args}"] if launcher_args else [])]
    args = stage_args(
        config or "demo/iterative-dpo", extra, reward_model_path=reward_model, rounds=rounds,
        num_samples=num_samples, round_accelerate_config=accelerate_config, round_num_processes=num_processes,
        **named,
    )
    # The driver is one process; it launches each DPO round itself with the accelerate settings above.
    launch_stage("iterative_dpo", args, None, None, None, dry_run)


@app.command("ppo", context_settings=PASSTHROUGH)
def ppo(
    ctx: typer.Context,
    config: config_option("llama3-70b/ppo") = None,
    model: Model = None,
    reward_model: RewardModel = None,
    dataset: Dataset = None,
    output_dir: OutputDir = None,
    accelerate_config: AccelerateConfig = None,
    num_processes: NumProcesses = None,
    launcher_args: LauncherArgs = None,
    push_to_hub: PushToHub = False,
    hub_model_id: HubModelId = None,
    dry_run: DryRun = False,
) -> None:
    """PPO with TRL's experimental PPOTrainer; reward = the RM's goodness, normalised by its mean/std on HelpSteer2.

    The normalisation is stored with the RM (hs2trl_reward.json); when missing it is measured first on the dataset's
    responses. `--max_steps N` runs N PPO steps. Paper recipe: llama3-70b/ppo.
    """
    args = stage_args(config or "demo/ppo", ctx.args, model_name_or_path=model, reward_model_path=reward_model,
                      dataset_name=dataset, output_dir=output_dir, push_to_hub=push_to_hub,
                      hub_model_id=hub_model_id)
    launch_stage("ppo", args, accelerate_config, num_processes, launcher_args, dry_run)


@exit_on_user_error
def _fail(message: str) -> None:
    raise Hs2Error(message)


@data_app.command("to-dpo")
@exit_on_user_error
def to_dpo(
    dataset: Annotated[str, typer.Option("--dataset", help="HelpSteer2-format rows: Hub id, local .jsonl/.jsonl.gz/.json/.parquet, or demo:helpsteer2.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the pairs (.jsonl).")],
    split: Annotated[str, typer.Option("--split", help="Split to read (Hub datasets).")] = "train",
    attribute: Annotated[str, typer.Option("--attribute", help="The score that ranks the two responses.")] = "helpfulness",
) -> None:
    """HelpSteer2 -> DPO pairs: the response with the higher helpfulness is chosen; equal helpfulness is dropped.

    Rows 2k and 2k+1 must share a prompt. Writes one JSON object per pair: prompt, chosen, rejected (chat messages;
    multi-turn prompts kept as turns) and the two scores. The full train split gives 7,221 pairs.
    """
    from ..data.pairs import helpsteer2_pairs
    from ..data.records import write_jsonl
    from ..data.sources import read_records

    with output_lock(output, "data to-dpo"):
        stats = helpsteer2_pairs(read_records(dataset, split), attribute)
        write_jsonl(output, stats.pairs)
    print(f"hs2: {output}: {stats.summary(attribute)}")
