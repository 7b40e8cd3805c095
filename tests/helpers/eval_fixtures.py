"""Small hand-made benchmark files in the `--data-dir` layout of `hs2 eval-policy` (the real ones, in
../shared/data/eval, are read by the tests marked shared_data). The texts are written here for the tests; only the
shapes (file names, fields, template placeholders, verdict labels) follow the benchmarks' files."""

from __future__ import annotations

import json
from pathlib import Path

MT_QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write two lines about tea.", "Now make them rhyme."]},
    {"question_id": 111, "category": "math", "turns": ["What is 17 * 3?", "And 17 * 4?"]},
    {"question_id": 121, "category": "reasoning",
     "turns": ["Is a tomato a fruit?", "Why do cooks call it a vegetable?"]},
]
MT_REFERENCES = {111: ["REF-51", "REF-68"], 121: ["REF-botany", "REF-cooking"]}
# Our own judge prompts with FastChat's names and placeholders.
MT_PROMPTS = [
    {"name": "single-v1", "type": "single", "system_prompt": "SYS-single", "output_format": "[[rating]]",
     "prompt_template": "GRADE-1 Q:{question} A:{answer} END"},
    {"name": "single-math-v1", "type": "single", "system_prompt": "SYS-single-math", "output_format": "[[rating]]",
     "prompt_template": "GRADE-MATH-1 Q:{question} REF:{ref_answer_1} A:{answer} END"},
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "SYS-multi", "output_format": "[[rating]]",
     "prompt_template": "GRADE-2 Q1:{question_1} A1:{answer_1} Q2:{question_2} A2:{answer_2} END"},
    {"name": "single-math-v1-multi-turn", "type": "single", "system_prompt": "SYS-multi-math",
     "output_format": "[[rating]]",
     "prompt_template": "GRADE-MATH-2 Q1:{question_1} R1:{ref_answer_1} A1:{answer_1} Q2:{question_2} "
                        "R2:{ref_answer_2} A2:{answer_2} END"},
    {"name": "pair-v2", "type": "pairwise", "system_prompt": "unused", "output_format": "[[A]]",
     "prompt_template": "{question} {answer_a} {answer_b}"},
]
ARENA_QUESTIONS = [{"question_id": f"q{i}", "category": "arena-hard-v0.1", "cluster": "c",
                    "turns": [{"content": f"Arena question {i}?"}]} for i in range(4)]
ARENA_CONFIG = {
    "judge_model": "gpt-4-1106-preview", "baseline_model": "gpt-4-0314", "temperature": 0, "max_tokens": 64,
    "regex_pattern": r"\[\[([AB<>=]+)\]\]", "number_of_judgment_attempts": 2, "system_prompt": "SYS-arena",
    "prompt_template": ["ARENA Q:{question_1} A:<<{answer_1}>> B:<<{answer_2}>> END"],
}
ALPACA = [{"dataset": "test", "instruction": f"Instruction number {i}.", "output": f"Reference output {i}.",
           "generator": "gpt4_1106_preview"} for i in range(4)]
TRUTHFUL = [
    {"question": "What colour is the sky on a clear day?",
     "mc1_targets": {"choices": ["Blue.", "Green."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["Blue.", "It is blue.", "Green.", "Purple."], "labels": [1, 1, 0, 0]}},
    {"question": "How many legs does a cat have?",
     "mc1_targets": {"choices": ["Four.", "Six."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["Four.", "Six.", "Eight."], "labels": [1, 0, 0]}},
    {"question": "Is ice frozen water?",
     "mc1_targets": {"choices": ["Yes.", "No."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["Yes.", "No.", "Only in winter."], "labels": [1, 0, 0]}},
]


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_eval_data(root: Path) -> Path:
    import yaml

    _jsonl(root / "mt_bench/question.jsonl", MT_QUESTIONS)
    _jsonl(root / "mt_bench/judge_prompts.jsonl", MT_PROMPTS)
    for name in ("reference_answer_gpt-4-0125-preview.jsonl", "reference_answer_gpt-4.jsonl"):
        _jsonl(root / "mt_bench" / name, [{"question_id": q, "model_id": "ref", "choices": [{"index": 0, "turns": t}]}
                                           for q, t in MT_REFERENCES.items()])
    _jsonl(root / "arena_hard_v0.1/question.jsonl", ARENA_QUESTIONS)
    _jsonl(root / "arena_hard_v0.1/model_answer_gpt-4-0314.jsonl",
           [{"question_id": q["question_id"], "model_id": "gpt-4-0314",
             "choices": [{"index": 0, "turns": [{"content": f"BASELINE answer {i}", "token_len": 3}]}]}
            for i, q in enumerate(ARENA_QUESTIONS)])
    (root / "arena_hard_v0.1/judge_config.yaml").write_text(yaml.safe_dump(ARENA_CONFIG), encoding="utf-8")
    _jsonl(root / "alpaca_eval/alpaca_eval_gpt4_baseline.jsonl", ALPACA)
    _jsonl(root / "truthfulqa/truthful_qa_mc_validation.jsonl", TRUTHFUL)
    return root
