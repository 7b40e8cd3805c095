"""Alignment commands (paper §4): sft, dpo (and dpo --iterative), ppo, and `hs2 data to-dpo`; online RL with the RM
(HelpSteer2-Preference): rloo, grpo."""

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
    RewardKeyEnv,
    RewardUrl,
    app,
    config_option,
    data_app,
    launch_stage,
    reward_source,
    stage_args,
)
from hs2trl.runtime.errors import Hs2Error, exit_on_user_error
from hs2trl.runtime.locks import output_lock

RewardModel = Annotated[str | None, typer.Option(
    "--reward-model", help="Reward model folder (from `hs2 train-rm`) or Hub id.")]


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
    iterative: Annotated[bool, typer.Option(
        "--iterative", help="Iterative DPO: sample, score with the RM, pair best vs worst, "
                            "train; per round.")] = False,
    reward_model: RewardModel = None,
    reward_url: RewardUrl = None,
    reward_api_key_env: RewardKeyEnv = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="--iterative: number of rounds.")] = None,
    num_samples: Annotated[int | None, typer.Option(
        "--num-samples", help="--iterative: responses sampled per prompt.")] = None,
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
        given = [flag for flag, value in (("--reward-model", reward_model), ("--reward-url", reward_url),
                                          ("--rounds", rounds), ("--num-samples", num_samples)) if value is not None]
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
        config or "demo/iterative-dpo", extra, rounds=rounds, num_samples=num_samples,
        round_accelerate_config=accelerate_config, round_num_processes=num_processes,
        **reward_source("reward_model_path", reward_model, reward_url, reward_api_key_env), **named,
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
    Needs TRL 1.12 (`pip install 'hs2trl[ppo]'`): TRL 1.13 removed PPOTrainer; `hs2 rloo` runs on current TRL.
    """
    _require_ppo()
    args = stage_args(config or "demo/ppo", ctx.args, model_name_or_path=model, reward_model_path=reward_model,
                      dataset_name=dataset, output_dir=output_dir, push_to_hub=push_to_hub,
                      hub_model_id=hub_model_id)
    launch_stage("ppo", args, accelerate_config, num_processes, launcher_args, dry_run)


Weights = Annotated[str | None, typer.Option(
    "--weights", "-w", help="How the RM's outputs fold into the reward: goodness (default), rewardbench-llama3-70b, "
    "rewardbench-nemotron4-340b, or one number per output; a 1-output RM (hs2 export-rm) is its own reward.")]
NormalizeReward = Annotated[bool, typer.Option(
    "--normalize-reward", help="Reward = (fold - mean) / std, with the statistics `hs2 rm-normalize` stored with "
    "the RM.")]


def _online_rl(stage: str, ctx: typer.Context, config, accelerate_config, num_processes, launcher_args, dry_run,
               **options) -> None:
    args = stage_args(config or f"demo/{stage}", ctx.args, **options)
    launch_stage(stage, args, accelerate_config, num_processes, launcher_args, dry_run)


@app.command("rloo", context_settings=PASSTHROUGH)
def rloo(
    ctx: typer.Context,
    config: config_option("llama3.1-70b/reinforce") = None,
    model: Model = None,
    reward_model: RewardModel = None,
    reward_url: RewardUrl = None,
    reward_api_key_env: RewardKeyEnv = None,
    dataset: Dataset = None,
    output_dir: OutputDir = None,
    weights: Weights = None,
    normalize_reward: NormalizeReward = False,
    accelerate_config: AccelerateConfig = None,
    num_processes: NumProcesses = None,
    launcher_args: LauncherArgs = None,
    push_to_hub: PushToHub = False,
    hub_model_id: HubModelId = None,
    resume: Resume = False,
    dry_run: DryRun = False,
) -> None:
    """Online RL with TRL's RLOOTrainer (REINFORCE, leave-one-out baseline, KL to the reference policy); reward = the
    SteerLM RM's attributes folded by --weights, read at the end-of-turn token as `hs2 annotate` reads it.

    Each attribute's batch mean is logged beside the reward (attributes/<name>), and every scored completion goes to
    OUTPUT/rewards.jsonl. TRL options pass through: --num_generations 4 --beta 0.01 --max_completion_length 1024,
    --use_vllm true --vllm_mode colocate. Paper recipe (HelpSteer2-Preference): llama3.1-70b/reinforce.
    """
    _online_rl("rloo", ctx, config, accelerate_config, num_processes, launcher_args, dry_run,
               model_name_or_path=model, dataset_name=dataset, output_dir=output_dir,
               **reward_source("reward_model_path", reward_model, reward_url, reward_api_key_env),
               attribute_weights=weights, normalize_reward=normalize_reward, push_to_hub=push_to_hub,
               hub_model_id=hub_model_id, resume=resume)


@app.command("grpo", context_settings=PASSTHROUGH)
def grpo(
    ctx: typer.Context,
    config: config_option("demo/grpo") = None,
    model: Model = None,
    reward_model: RewardModel = None,
    reward_url: RewardUrl = None,
    reward_api_key_env: RewardKeyEnv = None,
    dataset: Dataset = None,
    output_dir: OutputDir = None,
    weights: Weights = None,
    normalize_reward: NormalizeReward = False,
    per_attribute_rewards: Annotated[bool, typer.Option(
        "--per-attribute-rewards", help="Each attribute its own reward function, weighted by --weights (GRPO's "
        "multi-objective aggregation applies).")] = False,
    accelerate_config: AccelerateConfig = None,
    num_processes: NumProcesses = None,
    launcher_args: LauncherArgs = None,
    push_to_hub: PushToHub = False,
    hub_model_id: HubModelId = None,
    resume: Resume = False,
    dry_run: DryRun = False,
) -> None:
    """Online RL with TRL's GRPOTrainer, rewarded by the SteerLM RM as `hs2 rloo` is.

    --per-attribute-rewards passes the five attributes as five reward functions with the fold's weights (one RM pass
    serves them all), so that --multi_objective_aggregation normalize_then_sum works per attribute.
    """
    _online_rl("grpo", ctx, config, accelerate_config, num_processes, launcher_args, dry_run,
               model_name_or_path=model, dataset_name=dataset, output_dir=output_dir,
               **reward_source("reward_model_path", reward_model, reward_url, reward_api_key_env),
               attribute_weights=weights, normalize_reward=normalize_reward,
               per_attribute_rewards=per_attribute_rewards, push_to_hub=push_to_hub, hub_model_id=hub_model_id,
               resume=resume)


@exit_on_user_error
def _fail(message: str) -> None:
    raise Hs2Error(message)


@exit_on_user_error
def _require_ppo() -> None:
    """Before parsing or loading anything: PPO needs a TRL that still ships PPOTrainer."""
    from hs2trl.trl_internals import require_ppo

    require_ppo()


@data_app.command("to-dpo")
@exit_on_user_error
def to_dpo(
    dataset: Annotated[str, typer.Option(
        "--dataset", help="HelpSteer2-format rows: Hub id, local .jsonl/.jsonl.gz/.json/.parquet, or "
                          "demo:helpsteer2.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the pairs (.jsonl).")],
    split: Annotated[str, typer.Option("--split", help="Split to read (Hub datasets).")] = "train",
    attribute: Annotated[str, typer.Option(
        "--attribute", help="The score that ranks the two responses.")] = "helpfulness",
) -> None:
    """HelpSteer2 -> DPO pairs: the response with the higher helpfulness is chosen; equal helpfulness is dropped.

    Rows 2k and 2k+1 must share a prompt. Writes one JSON object per pair: prompt, chosen, rejected (chat messages;
    multi-turn prompts kept as turns) and the two scores. The full train split gives 7,221 pairs.
    """
    from hs2trl.data.pairs import helpsteer2_pairs
    from hs2trl.data.records import write_jsonl
    from hs2trl.data.sources import read_records

    with output_lock(output, "data to-dpo"):
        stats = helpsteer2_pairs(read_records(dataset, split), attribute)
        write_jsonl(output, stats.pairs)
    print(f"hs2: {output}: {stats.summary(attribute)}")
