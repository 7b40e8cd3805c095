"""MT Bench as the paper runs it (§4.1, App. H): 80 two-turn questions answered greedily (up to 1,024 new tokens, the
second turn after the model's own first answer), each turn graded 1-10 by a judge with FastChat's single-answer
prompts; score = the mean over all graded (question, turn) pairs, with per-category and per-turn means beside it.

As FastChat's `llm_judge` does it (`common.py`, `gen_judgment.py --mode single`):
- turn 1 uses `single-v1`, turn 2 `single-v1-multi-turn` (both turns shown, the second graded); the categories that
  need a reference (math, reasoning, coding) use `single-math-v1[-multi-turn]` with the reference answer inside;
- the judge's system message is the prompt's `system_prompt`, its user message the filled `prompt_template`;
  temperature 0, up to 2,048 tokens;
- the rating is the number in `[[N]]` (else in `[N]`); a reply with neither is a failed judgment, left out of the
  mean and counted (FastChat records -1).

The prompts and references are read from FastChat's files at run time (`sources.py`); by default the references the
paper used, GPT-4-0125-Preview's (13 of the 30 GPT-4 ones are wrong: questions 104, 105, 109, 111, 113, 114, 120,
122, 124, 125, 126, 128, 130).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from hs2trl.data.records import Record, read_file
from hs2trl.evaluation.answers import AnswerFile, Policy, answer_turns
from hs2trl.evaluation.judge import Judge, JudgeError, run_judgments
from hs2trl.evaluation.sources import fetch
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.resumable import KeyedLog

NAME = "mt-bench"
MAX_NEW_TOKENS = 1024  # paper App. H
JUDGE_MAX_TOKENS = 2048  # FastChat's judge call
PAPER_JUDGE = "gpt-4-0125-preview"
NEED_REFERENCE = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS for MT Bench
REFERENCES = ("gpt-4-0125-preview", "gpt-4")
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(text: str) -> float | None:
    """FastChat's rating parse: `[[N]]`, else `[N]`; None when neither is there."""
    match = _RATING.search(text) or _RATING_BACKUP.search(text)
    if not match:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def load_questions(data_dir: str | None, limit: int | None) -> tuple[list[dict], str]:
    path, source = fetch("mt-bench/questions", data_dir)
    questions = []
    for record in read_file(path):
        turns = record.data.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise Hs2Error(f"{record.where('turns')}: expected a list of non-empty strings")
        questions.append({"question_id": record.data.get("question_id", record.row),
                          "category": str(record.data.get("category", "")), "turns": turns})
    return questions[:limit], source


def load_prompts(data_dir: str | None) -> dict[str, dict]:
    path, _ = fetch("mt-bench/judge-prompts", data_dir)
    prompts = {r.data.get("name"): r for r in read_file(path)}
    needed = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
    out = {}
    for name in needed:
        record: Record | None = prompts.get(name)
        if record is None:
            raise Hs2Error(f"{path}: no judge prompt named '{name}'")
        out[name] = {"system_prompt": record.text("system_prompt"), "prompt_template": record.text("prompt_template")}
    return out


def load_references(data_dir: str | None, which: str) -> tuple[dict, str]:
    if which not in REFERENCES:
        raise Hs2Error(f"--mt-bench-references: '{which}' is not one of {', '.join(REFERENCES)}")
    path, source = fetch(f"mt-bench/reference/{which}", data_dir)
    references = {}
    for record in read_file(path):
        choices = record.data.get("choices")
        if not (isinstance(choices, list) and choices and isinstance(choices[0].get("turns"), list)):
            raise Hs2Error(f"{record.where('choices')}: expected [{{'turns': [...]}}]")
        references[record.data.get("question_id")] = choices[0]["turns"]
    return references, source


def judge_messages(prompts: dict, question: dict, answer: list[str], turn: int,
                   reference: list[str] | None) -> tuple[str, list[dict]]:
    """(prompt name, chat messages) for grading `turn` (1 or 2) of one answer, as FastChat's run_judge_single."""
    math_like = question["category"] in NEED_REFERENCE
    name = ("single-math-v1" if math_like else "single-v1") + ("-multi-turn" if turn == 2 else "")
    fields: dict = {}
    if math_like:
        if reference is None:
            raise Hs2Error(f"MT Bench question {question['question_id']} ({question['category']}) has no "
                           "reference answer")
        fields["ref_answer_1"] = reference[0]
        if turn == 2:
            fields["ref_answer_2"] = reference[1]
    if turn == 1:
        fields.update(question=question["turns"][0], answer=answer[0])
    else:
        fields.update(question_1=question["turns"][0], question_2=question["turns"][1], answer_1=answer[0],
                      answer_2=answer[1])
    prompt = prompts[name]
    return name, [{"role": "system", "content": prompt["system_prompt"]},
                  {"role": "user", "content": prompt["prompt_template"].format(**fields)}]


def generate(policy: Policy, folder: Path, data_dir: str | None, limit: int | None, max_new_tokens: int) -> dict:
    questions, source = load_questions(data_dir, limit)
    settings = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "attributes": policy.attributes}
    answers = answer_turns(policy, AnswerFile(folder, settings), questions, max_new_tokens, desc="MT Bench answers")
    texts = [t for row in answers.values() for t in row["turns"]]
    return {"questions": len(questions), "answers": len(texts), "data_source": source,
            "mean_response_chars": sum(len(t) for t in texts) / len(texts) if texts else None}


def judge(judge_: Judge, model: str, folder: Path, data_dir: str | None, limit: int | None, references: str) -> dict:
    """Grade every (question, turn) not yet graded by this judge model; the figures from all grades."""
    questions, _ = load_questions(data_dir, limit)
    prompts = load_prompts(data_dir)
    refs, ref_source = load_references(data_dir, references)
    answers = KeyedLog(folder / "answers.jsonl", key="question_id").load()
    jobs = {}
    for q in questions:
        answer = answers[q["question_id"]]["turns"]
        for turn in range(1, len(q["turns"]) + 1):
            name, messages = judge_messages(prompts, q, answer, turn, refs.get(q["question_id"]))
            jobs[f"{q['question_id']}/{turn}/{model}"] = _job(judge_, model, q, turn, name, messages)
    records = run_judgments(KeyedLog(folder / "judgments.jsonl"), jobs, judge_.settings.concurrency,
                            is_done=lambda r: r.get("rating") is not None, desc="MT Bench judgments")
    return summarise(list(records.values()), model, ref_source, references)


def _job(judge_: Judge, model: str, question: dict, turn: int, name: str, messages: list[dict]):
    def ask() -> dict:
        record = {"question_id": question["question_id"], "category": question["category"], "turn": turn,
                  "judge": model, "prompt_name": name}
        try:
            reply = judge_.chat(messages, model=model, temperature=0.0, max_tokens=JUDGE_MAX_TOKENS)
        except JudgeError as err:
            return {**record, "judgment": None, "rating": None, "error": str(err)}
        rating = parse_rating(reply)
        return {**record, "judgment": reply, "rating": rating,
                "error": None if rating is not None else "no [[rating]] in the reply"}

    return ask


def summarise(records: list[dict], judge_model: str, reference_source: str, references: str) -> dict:
    graded = [r for r in records if r.get("rating") is not None]
    ratings = [r["rating"] for r in graded]
    by_category, by_turn = defaultdict(list), defaultdict(list)
    for r in graded:
        by_category[r["category"]].append(r["rating"])
        by_turn[str(r["turn"])].append(r["rating"])
    n = len(ratings)
    mean = sum(ratings) / n if n else None
    se = (math.sqrt(sum((x - mean) ** 2 for x in ratings) / (n - 1)) / math.sqrt(n)) if n > 1 else None
    return {
        "score": mean, "n": n, "interval": {"kind": "se", "value": se} if se is not None else None,
        "per_category": {c: sum(v) / len(v) for c, v in sorted(by_category.items())},
        "per_turn": {t: sum(v) / len(v) for t, v in sorted(by_turn.items())},
        "failed_judgments": len(records) - n, "judge": judge_model,
        "references": f"{references} ({reference_source})",
    }
