"""Preference pairs for DPO: HelpSteer2 rows -> (chosen, rejected) by helpfulness, chosen/rejected rows as given, and
best-versus-worst pairs from scored samples (iterative DPO).

Every pair is conversational, the format TRL's `DPOTrainer` reads: `prompt` is a list of chat messages ending on a user
turn (multi-turn HelpSteer2 prompts are expanded), `chosen` and `rejected` are one assistant message each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hs2trl.data.helpsteer2 import attribute_scores, prompt_messages, response_text, validate_messages
from hs2trl.data.records import Record
from hs2trl.runtime.errors import Hs2Error

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class PairStats:
    """The pairs made from a dataset and what was left out (never silently)."""

    pairs: list[dict[str, Any]] = field(default_factory=list)
    ties: int = 0  # prompts whose two responses had equal scores: no preference, dropped

    @property
    def prompts(self) -> int:
        return len(self.pairs) + self.ties

    def summary(self, what: str = "helpfulness") -> str:
        return f"{len(self.pairs)} pairs kept, {self.ties} ties dropped (equal {what}) out of {self.prompts} prompts"


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def helpsteer2_pairs(records: Sequence[Record], attribute: str = "helpfulness") -> PairStats:
    """HelpSteer2 rows -> DPO pairs: rows 2k and 2k+1 answer the same prompt; the response with the higher `attribute`
    score is chosen, a tie is dropped (and counted). Rows that do not pair up are an error naming both rows."""
    if len(records) % 2:
        last = records[-1]
        raise Hs2Error(
            f"{last.where()}: odd number of rows ({len(records)}): this last row has no partner "
            "(HelpSteer2 pairs are consecutive rows 2k and 2k+1 sharing a prompt)"
        )
    stats = PairStats()
    for first, second in zip(records[0::2], records[1::2]):
        if first.data.get("prompt") != second.data.get("prompt"):
            for r in (first, second):
                prompt_messages(r)  # a missing/empty prompt gets its own, more precise message
            raise Hs2Error(
                f"{first.source}: rows {first.row} and {second.row}: field 'prompt': consecutive rows must share a "
                "prompt (HelpSteer2 pairs are rows 2k and 2k+1); the file is out of order or a row is missing"
            )
        (score_a,), (score_b,) = attribute_scores(first, [attribute]), attribute_scores(second, [attribute])
        for r, s in ((first, score_a), (second, score_b)):
            if s is None:
                raise Hs2Error(f"{r.where(attribute)}: missing score (needed to rank the pair)")
        text_a, text_b = response_text(first), response_text(second)
        if score_a == score_b:
            stats.ties += 1
            continue
        (hi, hi_text), (lo, lo_text) = sorted([(score_a, text_a), (score_b, text_b)], key=lambda x: -x[0])
        stats.pairs.append({
            "prompt": prompt_messages(first),
            "chosen": assistant(hi_text),
            "rejected": assistant(lo_text),
            "score_chosen": hi,
            "score_rejected": lo,
        })
    return stats


def is_preference_data(records: Sequence[Record]) -> bool:
    return bool(records) and all(col in records[0].data for col in ("chosen", "rejected"))


def _completion(value: Any, record: Record, key: str):
    if isinstance(value, str):
        if not value.strip():
            raise Hs2Error(f"{record.where(key)}: empty text")
        return value
    messages = validate_messages(value, record, key)
    if messages[-1]["role"] != "assistant":
        raise Hs2Error(f"{record.where(key)}: the last message must be an assistant turn")
    return messages


def preference_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """chosen/rejected rows (e.g. from `hs2 data to-dpo`) validated and reduced to `prompt`, `chosen`, `rejected`.

    Conversational rows are the norm; a HelpSteer2-style prompt string next to message-list completions is expanded to
    chat messages; all-string rows (standard format) are passed on as they are."""
    rows = []
    for r in records:
        row = {}
        for key in ("chosen", "rejected"):
            if key not in r.data:
                raise Hs2Error(f"{r.where(key)}: missing column")
            row[key] = _completion(r.data[key], r, key)
        if isinstance(row["chosen"], str) != isinstance(row["rejected"], str):
            raise Hs2Error(f"{r.where('rejected')}: 'chosen' and 'rejected' must both be strings or both "
                           "message lists")
        if "prompt" in r.data:
            prompt = r.data["prompt"]
            if isinstance(row["chosen"], list) and isinstance(prompt, str):
                row["prompt"] = prompt_messages(r)
            elif isinstance(prompt, str):
                if not prompt.strip():
                    raise Hs2Error(f"{r.where('prompt')}: empty prompt")
                row["prompt"] = prompt
            else:
                row["prompt"] = validate_messages(prompt, r, "prompt")
        elif isinstance(row["chosen"], str):
            raise Hs2Error(f"{r.where('prompt')}: missing column (needed when chosen/rejected are plain strings)")
        rows.append(row)
    return rows


def dpo_rows(records: Sequence[Record],
             attribute: str = "helpfulness") -> tuple[list[dict[str, Any]], PairStats | None]:
    """Any supported input -> DPO rows: chosen/rejected rows as they are, HelpSteer2 rows paired by `attribute`."""
    if is_preference_data(records):
        return preference_rows(records), None
    stats = helpsteer2_pairs(records, attribute)
    return [{k: p[k] for k in PAIR_COLUMNS} for p in stats.pairs], stats


def best_worst_pair(prompt: list[dict[str, str]], responses: Sequence[str], scores: Sequence[float]) -> dict | None:
    """Iterative DPO: the highest-scored response is chosen, the lowest rejected; None when they tie
    (no preference)."""
    if len(responses) != len(scores) or len(responses) < 2:
        raise ValueError("need at least two scored responses")
    hi = max(range(len(scores)), key=lambda i: scores[i])
    lo = min(range(len(scores)), key=lambda i: scores[i])
    if scores[hi] == scores[lo]:
        return None
    return {
        "prompt": prompt,
        "chosen": assistant(responses[hi]),
        "rejected": assistant(responses[lo]),
        "score_chosen": float(scores[hi]),
        "score_rejected": float(scores[lo]),
    }

