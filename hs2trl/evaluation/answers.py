"""A policy answering benchmark questions: greedy decoding with the model's chat template, batched and
length-sorted (`generation.generate_batches`), or vLLM when it is installed and a GPU is present. Answers are saved
as they are made (`answers.jsonl`, one row per question), so a rerun regenerates nothing already answered.

SteerLM models are asked with the attribute string in the system message, as they are used: by default the paper's
inference attributes (helpfulness 4, correctness 4, coherence 4, complexity 2, verbosity 2) for an output folder of
`hs2 steerlm` / `hs2 steerlm2`, nothing for any other model (`--attributes` overrides both).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.resumable import KeyedLog

STEERLM_STAGES = ("steerlm", "steerlm2")


def steering_levels(model_path: str, option: str | None) -> dict[str, int] | None:
    """The attribute levels to condition a model's prompts on: `--attributes` ('none' for none), else the paper's
    inference levels for a SteerLM output folder, else None."""
    from hs2trl.hub.folders import read_recipe_stage
    from hs2trl.steer.steering import DEFAULT_INFERENCE_ATTRIBUTES, parse_attribute_string

    if option is not None:
        if option.strip().lower() == "none":
            return None
        return parse_attribute_string(option, defaults=DEFAULT_INFERENCE_ATTRIBUTES)
    folder = Path(model_path)
    if folder.name.startswith("checkpoint-"):  # a checkpoint: the run folder holds the recipe
        folder = folder.parent
    if folder.is_dir() and read_recipe_stage(folder) in STEERLM_STAGES:
        return dict(DEFAULT_INFERENCE_ATTRIBUTES)
    return None


class Policy:
    """One model being evaluated: its tokenizer now, its weights on first use (`free()` drops them)."""

    def __init__(self, name_or_path: str, dtype: str = "auto", batch_size: int = 8, engine: str = "auto",
                 attributes: dict[str, int] | None = None):
        from hs2trl.runtime.models import load_tokenizer
        from hs2trl.runtime.pretrained import resolve_model
        from hs2trl.steer.generation import vllm_available

        self.name_or_path = name_or_path
        self.path = resolve_model(name_or_path)
        self.tokenizer = load_tokenizer(self.path)
        self.dtype, self.batch_size, self.attributes = dtype, batch_size, attributes
        if engine == "vllm" and not vllm_available():
            raise Hs2Error("--engine vllm: vLLM is not installed or there is no GPU")
        self.engine = "vllm" if engine == "vllm" or (engine == "auto" and vllm_available()) else "hf"
        from hs2trl.runtime.models import Lazy, load_causal_lm
        from hs2trl.steer.generation import vllm_engine

        self._model = Lazy(lambda: load_causal_lm(self.path, self.dtype))  # spread over all GPUs of one process
        self._llm = Lazy(lambda: vllm_engine(self.path))

    @property
    def model(self):
        """The causal LM (loaded on first use)."""
        return self._model()

    def messages(self, conversation: Sequence[dict]) -> list[dict]:
        from hs2trl.steer.steering import condition

        return condition(conversation, self.attributes) if self.attributes else [dict(m) for m in conversation]

    def answer(self, conversations: Sequence[Sequence[dict]], max_new_tokens: int,
               desc: str | None = None) -> Iterator[list[tuple[int, str]]]:
        """Greedy answers to conversations ending on a user turn; yields `(index, text)` batches as they finish."""
        from hs2trl.data.chat import encode_prompt

        prompts = [self.messages(c) for c in conversations]
        if not prompts:
            return
        if self.engine == "vllm":
            from hs2trl.steer.generation import sample_vllm

            texts = sample_vllm(self.path, self.tokenizer, prompts, 1, temperature=0.0, top_p=1.0,
                                max_new_tokens=max_new_tokens, llm=self._llm())
            yield [(i, t[0]) for i, t in enumerate(texts)]
            return
        from hs2trl.steer.generation import generate_batches

        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        yield from generate_batches(self.model, self.tokenizer, encoded, max_new_tokens, self.batch_size,
                                    progress=desc)

    def free(self) -> None:
        self._llm.free()
        self._model.free()


class AnswerFile:
    """`answers.jsonl` of one model on one benchmark (rows keyed by `question_id`, each with its `turns`), and
    `generation.json` beside it: the settings the answers were made with. A rerun with other settings is refused
    rather than mixing answers of two settings in one figure."""

    def __init__(self, folder: str | Path, settings: dict):
        self.folder = Path(folder)
        self.log = KeyedLog(self.folder / "answers.jsonl", key="question_id")
        self.settings = settings
        meta = self.folder / "generation.json"
        if meta.is_file() and self.log.path.is_file():
            before = json.loads(meta.read_text(encoding="utf-8"))
            changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
            if changed:
                what = ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in changed.items())
                raise Hs2Error(f"{self.log.path}: made with {what}; use another --output-dir, or --overwrite to "
                               "answer again")
        self.folder.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    def load(self) -> dict:
        return self.log.load()

    def save(self, rows: list[dict]) -> None:
        self.log.append(rows)

    def compact(self, ids) -> None:
        self.log.compact(ids)


def answer_turns(policy: Policy, answers: AnswerFile, questions: Sequence[dict], max_new_tokens: int,
                 desc: str) -> dict:
    """Answer every question's turns in order (turn k is asked after the model's own answers to turns 1..k-1),
    skipping what `answers` already holds. `questions`: dicts with `question_id` and `turns` (user texts).
    Returns {question_id: row} with `turns` = the answers."""
    done = answers.load()
    n_turns = max(len(q["turns"]) for q in questions) if questions else 0
    for turn in range(n_turns):
        todo = [q for q in questions
                if len(q["turns"]) > turn and len(done.get(q["question_id"], {}).get("turns", [])) == turn]
        conversations = []
        for q in todo:
            previous = done.get(q["question_id"], {}).get("turns", [])
            messages = []
            for k in range(turn):
                messages += [{"role": "user", "content": q["turns"][k]}, {"role": "assistant", "content": previous[k]}]
            conversations.append(messages + [{"role": "user", "content": q["turns"][turn]}])
        label = f"{desc} (turn {turn + 1})" if n_turns > 1 else desc
        for batch in policy.answer(conversations, max_new_tokens, desc=label):
            rows = []
            for i, text in batch:
                q = todo[i]
                row = {"question_id": q["question_id"], **{k: q[k] for k in ("category",) if k in q},
                       "turns": [*done.get(q["question_id"], {}).get("turns", []), text]}
                done[q["question_id"]] = row
                rows.append(row)
            answers.save(rows)
    answers.compact([q["question_id"] for q in questions])
    return {q["question_id"]: done[q["question_id"]] for q in questions}
