"""Arena Hard v0.1 as arena-hard-auto computes it: 500 questions answered greedily (its answer settings: temperature 0,
up to 4,096 tokens), each judged twice against gpt-4-0314's answer with the positions swapped, and a Bradley-Terry
score with a bootstrap 95% interval.

- Judge: the system prompt, the prompt template, temperature, max tokens and the verdict pattern come from the
  release's `judge_config.yaml`, read at run time. Game 1 shows the baseline as Assistant A and the model as B,
  game 2 the other way round. A reply with no verdict label is asked to finish with one (up to the config's
  `number_of_judgment_attempts`); a reply with none, or with two different ones, is a failed game (counted).
- Battles (`show_result.py`, v0.1): a verdict is turned into a win for the model, the baseline or a tie, seen from the
  model's side in both games; `[[A>>B]]`/`[[B>>A]]` count three times.
- Score: Bradley-Terry by logistic regression (base 10, scale 400, the baseline fixed at 1000), reported as the
  predicted win rate against the baseline, `100 / (1 + 10^((1000 - R) / 400))`; the 95% interval is the 2.5th and
  97.5th percentiles over 100 bootstrap resamples of the battles (seed 42). hs2trl fits each model on its own battles
  (arena-hard-auto fits every model of a run together, which gives the same point estimate: each is compared with
  the baseline only).
"""

from __future__ import annotations

import re
from pathlib import Path

from hs2trl.data.records import read_file
from hs2trl.evaluation.answers import AnswerFile, Policy, answer_turns
from hs2trl.evaluation.judge import Judge, JudgeError, run_judgments
from hs2trl.evaluation.sources import fetch
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.resumable import KeyedLog

NAME = "arena-hard"
MAX_NEW_TOKENS = 4096  # arena-hard-auto v0.1 gen_answer_config.yaml
BASELINE = "gpt-4-0314"
STRONG_WEIGHT = 3
BOOTSTRAP_ROUNDS, BOOTSTRAP_SEED = 100, 42
# hs2trl's own wording of the follow-up turn that asks a judge for the verdict label it left out.
ASK_FOR_VERDICT = "Please finish your evaluation with your final verdict, as one label in the required format."


def load_questions(data_dir: str | None, limit: int | None) -> tuple[list[dict], str]:
    path, source = fetch("arena-hard/questions", data_dir)
    questions = []
    for record in read_file(path):
        turns = record.data.get("turns")
        if not (isinstance(turns, list) and turns and isinstance(turns[0], dict)
                and isinstance(turns[0].get("content"), str)):
            raise Hs2Error(f"{record.where('turns')}: expected [{{'content': '...'}}]")
        questions.append({"question_id": record.data.get("question_id", str(record.row)),
                          "category": str(record.data.get("category", "")), "turns": [t["content"] for t in turns]})
    return questions[:limit], source


def load_baseline(data_dir: str | None) -> dict[str, str]:
    path, _ = fetch("arena-hard/baseline", data_dir)
    answers = {}
    for record in read_file(path):
        try:
            answers[record.data["question_id"]] = record.data["choices"][0]["turns"][0]["content"]
        except (KeyError, IndexError, TypeError):
            raise Hs2Error(f"{record.where('choices')}: expected choices[0].turns[0].content") from None
    return answers


def load_judge_config(data_dir: str | None) -> dict:
    import yaml

    path, _ = fetch("arena-hard/judge-config", data_dir)
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise Hs2Error(f"{path}: not valid YAML ({err})") from None
    template = config.get("prompt_template") if isinstance(config, dict) else None
    if isinstance(template, list):
        template = template[0] if template else None
    missing = [k for k in ("system_prompt", "regex_pattern") if not isinstance(config.get(k), str)]
    if missing or not isinstance(template, str):
        raise Hs2Error(f"{path}: needs system_prompt, prompt_template and regex_pattern")
    return {"system_prompt": config["system_prompt"], "prompt_template": template,
            "regex_pattern": config["regex_pattern"], "temperature": float(config.get("temperature", 0)),
            "max_tokens": int(config.get("max_tokens", 4096)),
            "attempts": int(config.get("number_of_judgment_attempts", 1)),
            "judge_model": config.get("judge_model")}


def parse_verdict(text: str, pattern: str) -> tuple[str | None, bool]:
    """(label, ask again?) as arena-hard-auto's get_score: one distinct label -> it; none -> ask again;
    several -> no."""
    labels = {m.strip("\n") for m in re.findall(pattern, text) if m != ""}
    if len(labels) == 1:
        return labels.pop(), False
    return None, not labels


def generate(policy: Policy, folder: Path, data_dir: str | None, limit: int | None, max_new_tokens: int) -> dict:
    questions, source = load_questions(data_dir, limit)
    settings = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "attributes": policy.attributes}
    answers = answer_turns(policy, AnswerFile(folder, settings), questions, max_new_tokens, desc="Arena Hard answers")
    return {"questions": len(questions), "answers": len(answers), "data_source": source}


def judge(judge_: Judge, model: str, folder: Path, data_dir: str | None, limit: int | None) -> dict:
    questions, source = load_questions(data_dir, limit)
    baseline = load_baseline(data_dir)
    config = load_judge_config(data_dir)
    answers = KeyedLog(folder / "answers.jsonl", key="question_id").load()
    jobs = {}
    for q in questions:
        if q["question_id"] not in baseline:
            raise Hs2Error(f"Arena Hard question {q['question_id']} has no {BASELINE} answer")
        ours, theirs = answers[q["question_id"]]["turns"][0], baseline[q["question_id"]]
        for game, (a, b) in enumerate(((theirs, ours), (ours, theirs)), start=1):
            jobs[f"{q['question_id']}/{game}/{model}"] = _job(judge_, model, config, q, game, a, b)
    records = run_judgments(KeyedLog(folder / "judgments.jsonl"), jobs, judge_.settings.concurrency,
                            is_done=lambda r: r.get("verdict") is not None, desc="Arena Hard judgments")
    result = score(list(records.values()))
    result.update(judge=model, data_source=source)
    return result


def _job(judge_: Judge, model: str, config: dict, question: dict, game: int, answer_a: str, answer_b: str):
    def ask() -> dict:
        record = {"question_id": question["question_id"], "game": game, "judge": model}
        messages = [{"role": "system", "content": config["system_prompt"]},
                    {"role": "user", "content": config["prompt_template"].format(
                        question_1=question["turns"][0], answer_1=answer_a, answer_2=answer_b)}]
        judgment = ""
        for _ in range(max(1, config["attempts"])):
            try:
                reply = judge_.chat(messages, model=model, temperature=config["temperature"],
                                    max_tokens=config["max_tokens"])
            except JudgeError as err:
                return {**record, "judgment": judgment or None, "verdict": None, "error": str(err)}
            judgment += reply
            verdict, again = parse_verdict(reply, config["regex_pattern"])
            if verdict is not None or not again:
                break
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": ASK_FOR_VERDICT}]
        error = None if verdict is not None else ("several different verdicts" if not again else "no verdict label")
        return {**record, "judgment": judgment, "verdict": verdict, "error": error}

    return ask


# Game 1 shows the baseline as A, game 2 shows the model as A: each verdict -> (model's outcome, weight).
_OUTCOMES = {
    1: {"A=B": ("tie", 1), "A>B": ("loss", 1), "A>>B": ("loss", STRONG_WEIGHT), "B>A": ("win", 1),
        "B>>A": ("win", STRONG_WEIGHT)},
    2: {"A=B": ("tie", 1), "A>B": ("win", 1), "A>>B": ("win", STRONG_WEIGHT), "B>A": ("loss", 1),
        "B>>A": ("loss", STRONG_WEIGHT)},
}


def battles(records: list[dict]) -> list[str]:
    """The model's battle outcomes ('win', 'loss', 'tie'), strong verdicts repeated; other labels are dropped."""
    out = []
    for r in records:
        outcome = _OUTCOMES[int(r["game"])].get(r.get("verdict") or "")
        if outcome:
            out += [outcome[0]] * outcome[1]
    return out


def bradley_terry_rating(outcomes) -> float:
    """The model's rating with the baseline fixed at 1000: arena-hard-auto's compute_mle_elo on two players
    (logistic regression, no intercept, features ±ln 10, every battle twice, a tie = one win for each side)."""
    import math

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    outcomes = list(outcomes)
    n = len(outcomes)
    wins_baseline = np.array([o == "loss" for o in outcomes] + [o in ("loss", "tie") for o in outcomes], dtype=float)
    if wins_baseline.min(initial=1.0) == wins_baseline.max(initial=0.0):  # all one way: the MLE is at infinity
        return math.inf if wins_baseline.max(initial=1.0) == 0 else -math.inf
    x = np.zeros((2 * n, 2))
    x[:, 0], x[:, 1] = math.log(10), -math.log(10)  # column 0: the baseline (model_a), column 1: the model
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8)
    lr.fit(x, wins_baseline)
    rating = 400 * lr.coef_[0] + 1000
    return float(rating[1] + (1000 - rating[0]))


def win_rate(rating: float) -> float:
    """100 x the predicted win rate against the baseline (rated 1000)."""
    import math

    if math.isinf(rating):
        return 100.0 if rating > 0 else 0.0
    return 100 / (1 + 10 ** ((1000 - rating) / 400))


def score(records: list[dict]) -> dict:
    import numpy as np

    outcomes = battles(records)
    failed = sum(1 for r in records if r.get("verdict") is None)
    if not outcomes:
        return {"score": None, "n": 0, "interval": None, "games": len(records), "failed_judgments": failed}
    point = win_rate(bradley_terry_rating(outcomes))
    rng = np.random.RandomState(BOOTSTRAP_SEED)
    boot = [win_rate(bradley_terry_rating(np.array(outcomes)[rng.choice(len(outcomes), len(outcomes), replace=True)]))
            for _ in range(BOOTSTRAP_ROUNDS)]
    low, high = np.percentile(boot, 2.5), np.percentile(boot, 97.5)
    counts = {k: outcomes.count(k) for k in ("win", "tie", "loss")}
    return {"score": point, "n": len({r["question_id"] for r in records}),
            "interval": {"kind": "ci95", "low": float(low), "high": float(high)},
            "battles": counts, "games": len(records), "failed_judgments": failed}
