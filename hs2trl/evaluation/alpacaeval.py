"""AlpacaEval 2.0 through the `alpaca_eval` package: its annotator judges each of the 805 instructions (the model's
answer against the GPT-4 Turbo reference), and its length-controlled win rate is the figure (Table 4's
"AlpacaEval 2.0 LC (SE)").

- The annotator is the package's own AlpacaEval 2.0 one (`weighted_alpaca_eval_gpt4_turbo`: its prompt, its random
  order of the two outputs, its log-probability parser), read from the installed package; hs2trl changes only the
  judge model and sends the calls through its own client (`judge.Judge`: the endpoint, the key, the concurrency,
  the retries). That annotator reads the judge's log-probabilities of its first token: the endpoint must return
  `logprobs` (OpenAI, vLLM and SGLang do).
- The length-controlled win rate (`get_length_controlled_winrate`) needs a file the package downloads from the Hub
  (`df_gamed.csv` of tatsu-lab/alpaca_eval). When it cannot, the plain win rate and its SE are reported instead,
  marked as such, and the reason is kept.
- Answers: greedy, up to 2,048 new tokens (the most common setting of the package's model configs; AlpacaEval itself
  prescribes none).
- Judgments are cached in `annotations.json` (the package's cache) and written to `judgments.jsonl`; a failed call or
  an unparsable reply is left out of the figure, counted, and asked again on the next run.
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from hs2trl.data.records import read_file, write_jsonl
from hs2trl.evaluation.answers import AnswerFile, Policy, answer_turns
from hs2trl.evaluation.judge import Judge, JudgeError
from hs2trl.evaluation.sources import fetch
from hs2trl.runtime.errors import Hs2Error, first_line
from hs2trl.runtime.resumable import KeyedLog

NAME = "alpacaeval"
MAX_NEW_TOKENS = 2048
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"  # the AlpacaEval 2.0 leaderboard's annotator
PAPER_JUDGE = "gpt-4-1106-preview"


def load_reference(data_dir: str | None, limit: int | None) -> tuple[list[dict], str]:
    path, source = fetch("alpacaeval/reference", data_dir)
    rows = []
    for record in read_file(path):
        rows.append({"question_id": len(rows), "instruction": record.text("instruction"),
                     "output": record.text("output"),
                     "generator": str(record.data.get("generator", "gpt4_1106_preview"))})
    return rows[:limit], source


def generate(policy: Policy, folder: Path, data_dir: str | None, limit: int | None, max_new_tokens: int) -> dict:
    reference, source = load_reference(data_dir, limit)
    questions = [{"question_id": r["question_id"], "turns": [r["instruction"]]} for r in reference]
    settings = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "attributes": policy.attributes}
    answers = answer_turns(policy, AnswerFile(folder, settings), questions, max_new_tokens, desc="AlpacaEval answers")
    return {"questions": len(questions), "answers": len(answers), "data_source": source}


def import_alpaca_eval():
    """`alpaca_eval` (0.6.x imports `pkg_resources` for two version lookups; setuptools 81 removed it: a stand-in
    with those two functions is provided when it is missing)."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.metadata
        import types

        from packaging.version import parse

        stand_in = types.ModuleType("pkg_resources")
        stand_in.parse_version = parse
        stand_in.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
        sys.modules["pkg_resources"] = stand_in
    try:
        import alpaca_eval.annotators  # noqa: F401
        import alpaca_eval.metrics  # noqa: F401
    except ImportError as err:
        raise Hs2Error(f"alpacaeval needs the alpaca_eval package ({err}): pip install 'hs2trl[eval]'") from None
    return alpaca_eval


@contextmanager
def _quiet():
    """alpaca_eval logs through the root logger (a traceback for each unparsable reply): silence it while it runs."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def write_annotator_config(judge_model: str, folder: Path) -> Path:
    """The package's AlpacaEval 2.0 annotator config with `judge_model` as the judge, written beside the judgments
    (without its `fn_completions`: hs2trl passes its own; nothing secret is in it)."""
    import yaml

    ae = import_alpaca_eval()
    configs = Path(ae.__file__).parent / "evaluators_configs"
    config = yaml.safe_load((configs / ANNOTATOR / "configs.yaml").read_text(encoding="utf-8"))[ANNOTATOR]
    config.pop("fn_completions", None)
    config["prompt_template"] = str(configs / config["prompt_template"])
    config["completions_kwargs"] = {**config["completions_kwargs"], "model_name": judge_model}
    path = (folder / "annotator" / "configs.yaml").resolve()  # the package resolves relative paths elsewhere
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({ANNOTATOR: config}, sort_keys=False), encoding="utf-8")
    return path


def completion_function(judge_: Judge):
    """An `fn_completions` for alpaca_eval's annotator that sends its prompts through hs2trl's judge client."""
    from alpaca_eval.utils import prompt_to_chatml

    def complete(prompts, model_name, max_tokens=1, temperature=None, **kwargs):
        started = time.perf_counter()
        extra = {k: v for k, v in kwargs.items() if k in ("logprobs", "top_logprobs")}

        def one(prompt):
            try:
                return judge_.complete(prompt_to_chatml(prompt.strip()), model=model_name, max_tokens=max_tokens,
                                       temperature=temperature if temperature is not None else 0.0, **extra)
            except JudgeError as err:  # left out of the figure (the parser fails on it), asked again next run
                return {"text": "", "error": str(err)}

        with ThreadPoolExecutor(max_workers=max(1, judge_.settings.concurrency)) as pool:
            choices = list(pool.map(one, prompts))
        elapsed = (time.perf_counter() - started) / max(1, len(prompts))
        return {"completions": [c["text"] for c in choices], "completions_all": choices,
                "price_per_example": [None] * len(choices), "time_per_example": [elapsed] * len(choices)}

    return complete


def judge(judge_: Judge, model: str, folder: Path, data_dir: str | None, limit: int | None, model_name: str) -> dict:
    import pandas as pd

    ae = import_alpaca_eval()
    from alpaca_eval.annotators import PairwiseAnnotator

    reference, source = load_reference(data_dir, limit)
    answers = KeyedLog(folder / "answers.jsonl", key="question_id").load()
    config = write_annotator_config(model, folder)
    ours = [{"instruction": r["instruction"], "output": answers[r["question_id"]]["turns"][0], "generator": model_name}
            for r in reference]
    cache = (folder / "annotations.json").resolve()
    _forget_failures(cache)
    with _quiet():
        annotator = PairwiseAnnotator(annotators_config=config, caching_path=cache,
                                      fn_completions=completion_function(judge_))
        annotations = annotator.annotate_head2head(outputs_1=reference, outputs_2=ours, is_ordered=True)
    position = {r["instruction"]: r["question_id"] for r in reference}
    done = {position[a["instruction"]]: a for a in annotations if a.get("preference") is not None}
    write_jsonl(folder / "judgments.jsonl", [{"key": str(r["question_id"]), "question_id": r["question_id"],
                 "judge": model, "annotator": ANNOTATOR,
                 **({"preference": _plain(done[r["question_id"]]["preference"]),
                     "raw_completion": _plain(done[r["question_id"]].get("preference_raw_completion"))}
                    if r["question_id"] in done else {"preference": None, "error": "no preference (failed call or "
                                                                                    "unparsable reply)"})}
                for r in reference])
    result = {"n": len(done), "failed_judgments": len(reference) - len(done), "judge": model, "annotator": ANNOTATOR,
              "data_source": source}
    if not done:
        return {**result, "score": None, "interval": None}
    # alpaca_eval's GLM reads each instruction's difficulty by its position in the full 805 (the frame's index)
    frame = pd.DataFrame([done[i] for i in sorted(done)], index=sorted(done))
    with _quiet():
        plain = ae.metrics.get_winrate(frame)
        try:
            lc = ae.metrics.get_length_controlled_winrate(frame, save_weights_dir=None)
        except Exception as err:  # the Hub file it needs is out of reach (offline), or the fit failed
            lc, reason = None, first_line(err)[:160]
    result.update(win_rate=float(plain["win_rate"]), win_rate_se=float(plain["standard_error"]))
    if lc is not None:
        result.update(lc_win_rate=float(lc["length_controlled_winrate"]),
                      lc_win_rate_se=float(lc["lc_standard_error"]))
        result.update(score=result["lc_win_rate"], metric="lc_win_rate",
                      interval={"kind": "se", "value": result["lc_win_rate_se"]})
    else:
        result.update(score=result["win_rate"], metric="win_rate",
                      interval={"kind": "se", "value": result["win_rate_se"]},
                      note=f"plain win rate: the length-controlled one needs df_gamed.csv from the Hub ({reason})")
    return result


def _forget_failures(cache: Path) -> None:
    """The package keeps failed annotations in its cache so as never to ask them again; hs2trl asks them again on
    the next run: drop them from the cache first."""
    import json
    import math

    if not cache.is_file():
        return
    rows = json.loads(cache.read_text(encoding="utf-8"))
    kept = [r for r in rows if isinstance(r.get("preference"), (int, float)) and math.isfinite(r["preference"])
            and r["preference"] >= 0]
    if len(kept) != len(rows):
        cache.write_text(json.dumps(kept, indent=2), encoding="utf-8")


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None if value is None else str(value)
