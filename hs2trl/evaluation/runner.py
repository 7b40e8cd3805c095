"""`hs2 eval-policy`, from arguments to the report: what to run, checked before any work; then per model the
answers (and TruthfulQA's log-likelihoods), then the judge's calls, then the reward model, then the table.

Layout of the output folder:

    O/results.json, O/table.md, O/figures.png
    O/<model>/<benchmark>/answers.jsonl, generation.json, judgments.jsonl (and the benchmark's own files)
    RUN_DIR/checkpoint_selection.json        (--checkpoints RUN_DIR)
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hs2trl.evaluation import alpacaeval, arena_hard, mt_bench, report, reward, truthfulqa
from hs2trl.evaluation.judge import Judge, JudgeSettings
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.outputs import check_model_source, checkpoint_dirs, is_model_folder
from hs2trl.runtime.say import say

BENCHMARKS = (mt_bench.NAME, truthfulqa.NAME, alpacaeval.NAME, arena_hard.NAME, reward.NAME)
TABLE4 = (mt_bench.NAME, truthfulqa.NAME, alpacaeval.NAME, arena_hard.NAME)
JUDGED = (mt_bench.NAME, alpacaeval.NAME, arena_hard.NAME)
DEFAULT_MAX_NEW_TOKENS = {mt_bench.NAME: mt_bench.MAX_NEW_TOKENS, alpacaeval.NAME: alpacaeval.MAX_NEW_TOKENS,
                          arena_hard.NAME: arena_hard.MAX_NEW_TOKENS, reward.NAME: reward.MAX_NEW_TOKENS}
PAPER = "paper"  # --judge-model paper: each benchmark's judge in the paper


@dataclass
class ModelToEvaluate:
    name: str  # the folder name under the output dir and the table's row
    path: str


@dataclass
class Plan:
    models: list[ModelToEvaluate]
    benchmarks: list[str]
    output_dir: Path
    judge: Judge | None
    judge_models: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # benchmark -> why it is not (fully) run
    reference: ModelToEvaluate | None = None
    run_dir: Path | None = None


def parse_benchmarks(spec: str | None, reward_model: str | None) -> list[str]:
    if spec is None:
        return [*TABLE4, *([reward.NAME] if reward_model else [])]
    names = [b.strip() for b in spec.split(",") if b.strip()]
    unknown = [b for b in names if b not in BENCHMARKS]
    if unknown or not names:
        raise Hs2Error(f"--benchmarks: unknown {', '.join(map(repr, unknown)) or '(none given)'}; known: "
                       f"{', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(names))


def model_name(path: str) -> str:
    name = path.removeprefix("pkg:").rstrip("/")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name or name) or "model"


def models_to_evaluate(models: list[str], checkpoints: str | None) -> tuple[list[ModelToEvaluate], Path | None]:
    """The models named, or every checkpoint-N of a run (oldest first) and its final model."""
    if checkpoints:
        if models:
            raise Hs2Error("give --model or --checkpoints, not both")
        run = Path(checkpoints)
        if not run.is_dir():
            raise Hs2Error(f"--checkpoints {checkpoints}: no such folder")
        found = [ModelToEvaluate(p.name, str(p)) for p in checkpoint_dirs(run)]
        if is_model_folder(run):
            found.append(ModelToEvaluate("final", str(run)))
        if not found:
            raise Hs2Error(f"--checkpoints {checkpoints}: no checkpoint-N folder and no final model in it")
        for m in found:
            check_model_source(m.path, "--checkpoints")
        return found, run
    if not models:
        raise Hs2Error("eval-policy: give --model (one or more) or --checkpoints RUN_DIR")
    out, seen = [], set()
    for path in models:
        check_model_source(path, "--model")
        name = model_name(path)
        if name in seen:  # two folders of the same name: prefix the parent folder
            name = model_name(str(Path(path.rstrip("/")).parent)) + "_" + name
        seen.add(name)
        out.append(ModelToEvaluate(name, path))
    return out, None


def prepare(args) -> Plan:
    """Every check that can fail before any model is loaded: names, models, data files, the judge and its key."""
    benchmarks = parse_benchmarks(args.benchmarks, args.reward_model or args.reward_url)
    models, run_dir = models_to_evaluate(list(args.models or []), args.checkpoints)
    plan = Plan(models=models, benchmarks=benchmarks, output_dir=Path(args.output_dir), judge=None, run_dir=run_dir)
    if args.limit is not None and args.limit < 1:
        raise Hs2Error("--limit must be at least 1")
    judged = [b for b in benchmarks if b in JUDGED]
    if judged and args.judge_model:
        plan.judge = Judge(JudgeSettings(model=args.judge_model, base_url=args.judge_base_url,
                                         api_key_env=args.judge_api_key_env, concurrency=args.judge_concurrency,
                                         max_retries=args.judge_max_retries, timeout=args.judge_timeout))
        plan.judge.check_reachable()
    elif judged:
        for b in judged:
            plan.skipped[b] = ("no judge (--judge-model)"
                               + (": answers generated for their length" if b == mt_bench.NAME else ""))
    if reward.NAME in benchmarks:
        if not args.reward_model and not args.reward_url:
            raise Hs2Error("--benchmarks reward needs --reward-model (a SteerLM reward model) or --reward-url (an "
                           "`hs2 serve-rm` server)")
        if args.reward_model:
            from hs2trl.rm.loading import check_reward_model

            check_model_source(args.reward_model, "--reward-model", check_folder=check_reward_model)
        from hs2trl.rm.scorer import open_scorer

        served = open_scorer(None, args.reward_url, args.reward_api_key_env) if args.reward_url else None
        if served is not None:  # reachable, and the weights fit its outputs
            served.weights(args.weights, "goodness")
            served.close()
        if args.reference_model:
            check_model_source(args.reference_model, "--reference-model")
            plan.reference = ModelToEvaluate("reference_" + model_name(args.reference_model), args.reference_model)
    elif args.reference_model:
        raise Hs2Error("--reference-model is used by the reward benchmark: add reward to --benchmarks")
    _check_data(plan, args)
    selection = select_by(args, benchmarks)
    if run_dir and selection in plan.skipped:
        raise Hs2Error(f"--checkpoints: selecting by {selection} needs its score, and it is skipped: "
                       f"{plan.skipped[selection]}")
    for b in benchmarks:
        if b in JUDGED and plan.judge is not None:
            plan.judge_models[b] = _judge_model(b, args)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    return plan


def _judge_model(benchmark: str, args) -> str:
    if args.judge_model != PAPER:
        return args.judge_model
    if benchmark == arena_hard.NAME:
        return arena_hard.load_judge_config(args.data_dir).get("judge_model") or "gpt-4-1106-preview"
    return {mt_bench.NAME: mt_bench.PAPER_JUDGE, alpacaeval.NAME: alpacaeval.PAPER_JUDGE}[benchmark]


def _check_data(plan: Plan, args) -> None:
    """Read (fetching once) every file the run needs, so that a missing one fails now, not after hours."""
    runs = lambda b: b in plan.benchmarks and b not in plan.skipped  # noqa: E731
    if mt_bench.NAME in plan.benchmarks:
        mt_bench.load_questions(args.data_dir, args.limit)
        if runs(mt_bench.NAME):
            mt_bench.load_prompts(args.data_dir)
            mt_bench.load_references(args.data_dir, args.mt_bench_references)
    if runs(arena_hard.NAME):
        arena_hard.load_questions(args.data_dir, args.limit)
        arena_hard.load_baseline(args.data_dir)
        arena_hard.load_judge_config(args.data_dir)
    if runs(alpacaeval.NAME):
        alpacaeval.load_reference(args.data_dir, args.limit)
        alpacaeval.import_alpaca_eval()
    if truthfulqa.NAME in plan.benchmarks:
        truthfulqa.import_lm_eval()
    if reward.NAME in plan.benchmarks and not reward.load_prompts(args.reward_dataset, args.reward_split, args.limit):
        raise Hs2Error(f"{args.reward_dataset}: no prompts")


def select_by(args, benchmarks: list[str]) -> str:
    if args.select_by:
        if args.select_by not in benchmarks:
            raise Hs2Error(f"--select-by {args.select_by}: not among --benchmarks ({', '.join(benchmarks)})")
        return args.select_by
    return mt_bench.NAME if mt_bench.NAME in benchmarks else benchmarks[0]


def run(args) -> dict:
    """Evaluate every model; write and print the report; with --checkpoints, name the best. Returns the results."""
    return _evaluate(prepare(args), args)


def _evaluate(plan: Plan, args) -> dict:
    from hs2trl.evaluation.answers import Policy, steering_levels

    if plan.skipped:
        say("skipping " + "; ".join(f"{b}: {why}" for b, why in plan.skipped.items()))
    results = {"models": {}, "settings": _settings(args, plan)}
    evaluated = [*plan.models, *([plan.reference] if plan.reference else [])]
    for k, model in enumerate(evaluated, start=1):
        folder = plan.output_dir / model.name
        if args.overwrite and folder.is_dir():
            shutil.rmtree(folder)
        only_reward = model is plan.reference
        say(f"[{k}/{len(evaluated)}] {model.path}" + (" (reference for the reward win rate)" if only_reward else ""))
        policy = Policy(model.path, dtype=args.dtype, batch_size=args.batch_size, engine=args.engine,
                        attributes=steering_levels(model.path, args.attributes))
        if policy.attributes:
            from hs2trl.steer.steering import attribute_string

            say(f"asking {model.name} with the attribute string '{attribute_string(policy.attributes)}' "
                "(SteerLM; --attributes to change)")
        entry = results["models"].setdefault(model.name, {"path": model.path, "benchmarks": {}})
        for bench in ([reward.NAME] if only_reward else plan.benchmarks):
            if bench in plan.skipped and bench != mt_bench.NAME:
                entry["benchmarks"][bench] = {}
                continue
            if bench == truthfulqa.NAME:
                continue
            started = time.perf_counter()
            tokens = min(DEFAULT_MAX_NEW_TOKENS[bench], args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[bench])
            if bench == reward.NAME:
                info = reward.generate(policy, folder / bench, args.reward_dataset, args.reward_split, args.limit,
                                       tokens)
            else:
                module = {mt_bench.NAME: mt_bench, alpacaeval.NAME: alpacaeval, arena_hard.NAME: arena_hard}[bench]
                info = module.generate(policy, folder / bench, args.data_dir, args.limit, tokens)
            entry["benchmarks"][bench] = {"generation": {**info, "max_new_tokens": tokens, "engine": policy.engine,
                                                         "seconds": round(time.perf_counter() - started, 1)}}
        policy.free()
        if truthfulqa.NAME in plan.benchmarks and not only_reward:
            from hs2trl.runtime.models import dtype_name
            from hs2trl.runtime.pretrained import resolve_model

            entry["benchmarks"][truthfulqa.NAME] = truthfulqa.evaluate(
                resolve_model(model.path), folder / truthfulqa.NAME, args.data_dir, args.limit, args.batch_size,
                dtype_name(args.dtype), _device())
    _judge_all(plan, args, results)
    if reward.NAME in plan.benchmarks:
        _score_rewards(plan, args, results)
    _finish_entries(plan, results)
    paths = report.write(plan.output_dir, results)
    report.print_table(results)
    say(f"wrote {paths['results']}, {paths['table']}, {paths['chart']}")
    if plan.run_dir is not None:
        _select_checkpoint(plan, args, results)
    return results


def _judge_all(plan: Plan, args, results: dict) -> None:
    if plan.judge is None:
        return
    for model in plan.models:
        entry = results["models"][model.name]["benchmarks"]
        folder = plan.output_dir / model.name
        for bench in plan.benchmarks:
            if bench not in plan.judge_models:
                continue
            judge_model = plan.judge_models[bench]
            if bench == mt_bench.NAME:
                figures = mt_bench.judge(plan.judge, judge_model, folder / bench, args.data_dir, args.limit,
                                         args.mt_bench_references)
            elif bench == arena_hard.NAME:
                figures = arena_hard.judge(plan.judge, judge_model, folder / bench, args.data_dir, args.limit)
            else:
                figures = alpacaeval.judge(plan.judge, judge_model, folder / bench, args.data_dir, args.limit,
                                           model.name)
            entry[bench].update(figures)
            if figures.get("failed_judgments"):
                say(f"{model.name} {bench}: {figures['failed_judgments']} judgments failed (left out, counted "
                    f"in results.json; the same command asks them again)")


def _score_rewards(plan: Plan, args, results: dict) -> None:
    scorer = reward.RewardScorer(args.reward_model, args.weights, batch_size=args.batch_size, url=args.reward_url,
                                 api_key_env=args.reward_api_key_env)
    source = f"{args.reward_dataset}[{args.reward_split}]"
    scores = {}
    for model in [*plan.models, *([plan.reference] if plan.reference else [])]:
        rewards, attributes, lengths = reward.score(scorer, plan.output_dir / model.name / reward.NAME,
                                                    args.reward_dataset, args.reward_split, args.limit)
        scores[model.name] = rewards
        results["models"][model.name]["benchmarks"][reward.NAME].update(
            reward.summarise(rewards, attributes, scorer.weights_name, scorer.name, source, lengths))
    if plan.reference:
        for model in plan.models:
            results["models"][model.name]["benchmarks"][reward.NAME]["vs_reference"] = {
                "reference": plan.reference.path, **reward.win_rate(scores[model.name], scores[plan.reference.name])}


def _finish_entries(plan: Plan, results: dict) -> None:
    """Mean response length for MT Bench, the skipped reasons, n and score for every entry."""
    for model in results["models"].values():
        for bench, entry in model["benchmarks"].items():
            if bench == mt_bench.NAME:
                entry["mean_response_chars"] = entry.get("generation", {}).get("mean_response_chars")
            if bench in plan.skipped:
                entry["skipped"] = plan.skipped[bench]
            entry.setdefault("score", None)
            entry.setdefault("n", entry.get("generation", {}).get("questions"))
            entry.setdefault("interval", None)
            entry.setdefault("judge", plan.judge_models.get(bench))
            entry.setdefault("data_source", entry.get("generation", {}).get("data_source"))


def _select_checkpoint(plan: Plan, args, results: dict) -> None:
    import json

    bench = select_by(args, plan.benchmarks)
    scores = {m.name: results["models"][m.name]["benchmarks"].get(bench, {}).get("score") for m in plan.models}
    scored = {k: v for k, v in scores.items() if v is not None}
    if not scored:
        raise Hs2Error(f"--checkpoints: no model got a {bench} score")
    best = max(scored, key=scored.get)
    path = next(m.path for m in plan.models if m.name == best)
    out = {"benchmark": bench, "scores": scores, "best": best, "best_path": path,
           "results": str(plan.output_dir / "results.json")}
    target = plan.run_dir / "checkpoint_selection.json"
    target.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    say(f"best by {bench}: {path} ({scored[best]:.4g}); all scores in {target}")


def _settings(args, plan: Plan) -> dict:
    from hs2trl.evaluation.judge import public_url

    return {"benchmarks": plan.benchmarks, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
            "decoding": "greedy", "judge_models": plan.judge_models,
            "judge_base_url": public_url(args.judge_base_url) if plan.judge else None,
            "data_dir": args.data_dir, "reward_model": args.reward_model or args.reward_url, "weights": args.weights,
            "reference_model": args.reference_model}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


