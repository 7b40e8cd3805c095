"""Preference pairs with a strength: HelpSteer2-Preference, HelpSteer3-Preference and TRL chosen/rejected rows.

Row formats, as their dataset cards give them:
- HelpSteer2-Preference (huggingface.co/datasets/nvidia/HelpSteer2, "Preferences" section; arXiv 2410.01257):
  `prompt` (a HelpSteer2 prompt string, multi-turn with `<extra_id_1>` markers), `response_1`, `response_2`,
  `preference_strength` in -3..3 (-3/-2/-1: response 1 much better / better / slightly better, 0: about the same,
  1/2/3: response 2 slightly better / better / much better) and `split`.
- HelpSteer3-Preference (huggingface.co/datasets/nvidia/HelpSteer3, config "preference"): `context` (chat messages
  ending on a user turn), `response1`, `response2`, `overall_preference` on the same -3..3 scale.
- TRL's preference rows: `chosen`, `rejected` (strings or chat messages) with an optional `prompt`, and an optional
  `margin` (> 0), which becomes the strength (1.0 without one).

A strength of 0 is no preference: the row is dropped and counted, never turned into a pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hs2trl.data.helpsteer2 import prompt_messages, validate_messages
from hs2trl.data.records import Record
from hs2trl.runtime.errors import Hs2Error

HELPSTEER2 = "helpsteer2-preference"
HELPSTEER3 = "helpsteer3-preference"
CHOSEN_REJECTED = "chosen-rejected"
MAX_STRENGTH = 3

# format -> (prompt column, response 1, response 2, signed strength column)
_SIGNED_COLUMNS = {
    HELPSTEER2: ("prompt", "response_1", "response_2", "preference_strength"),
    HELPSTEER3: ("context", "response1", "response2", "overall_preference"),
}
FORMAT_HINT = ("expected HelpSteer2-Preference rows (prompt, response_1, response_2, preference_strength), "
               "HelpSteer3-Preference rows (context, response1, response2, overall_preference) or chosen/rejected "
               "rows (optional prompt and margin)")


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[dict[str, str]]  # chat messages before the two responses (multi-turn prompts become turns)
    chosen: str  # the better response's text
    rejected: str
    strength: float  # |preference strength|: 1..3 for HelpSteer2/3-Preference; a TRL row's `margin`, else 1.0
    where: str  # "FILE: row N" for one-line errors


@dataclass
class PairStats:
    rows: int = 0
    pairs: int = 0
    ties_dropped: int = 0
    # signed strength -> rows. HelpSteer2/3-Preference: as annotated (negative: response 1 better). chosen/rejected
    # rows: +margin rounded up to a whole number (a margin of 0.5 counts under 1), so that 0 only ever counts ties.
    strengths: dict[int, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.rows} rows read, {self.pairs} pairs, {self.ties_dropped} ties dropped "
                "(strength 0: about the same)")


def preference_format(records: Sequence[Record]) -> str | None:
    """Which preference format the rows are in, from the first row's columns; None for anything else (HelpSteer2
    rating rows, for one)."""
    if not records:
        return None
    columns = records[0].data.keys()
    for name, (_, first, second, strength) in _SIGNED_COLUMNS.items():
        if strength in columns or (first in columns and second in columns):
            return name
    if "chosen" in columns and "rejected" in columns:
        return CHOSEN_REJECTED
    return None


def preference_pairs(records: Sequence[Record]) -> tuple[list[PreferencePair], PairStats]:
    """Every row as a pair with its strength, ties (strength 0) dropped and counted; the first bad row raises an
    `Hs2Error` naming its file, row and field."""
    if not records:
        raise Hs2Error("dataset is empty")
    kind = preference_format(records)
    if kind is None:
        raise Hs2Error(f"{records[0].where()}: not preference data: {FORMAT_HINT}")
    stats = PairStats()
    pairs = []
    for record in records:
        stats.rows += 1
        signed, pair = _chosen_rejected_pair(record) if kind == CHOSEN_REJECTED else _signed_pair(record, kind)
        stats.strengths[signed] = stats.strengths.get(signed, 0) + 1
        if pair is None:
            stats.ties_dropped += 1
            continue
        pairs.append(pair)
    stats.pairs = len(pairs)
    stats.strengths = dict(sorted(stats.strengths.items()))
    return pairs, stats


def trl_row(pair: PreferencePair) -> dict[str, Any]:
    """The pair as a row TRL's `RewardTrainer` reads as it is: conversational with an explicit prompt (it prepends
    `prompt` to each completion) and `margin`, which the stock trainer subtracts (margin Bradley-Terry)."""
    return {
        "prompt": pair.prompt,
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
        "margin": pair.strength,
    }


def _signed_pair(record: Record, kind: str) -> tuple[int, PreferencePair | None]:
    prompt_field, first, second, strength_field = _SIGNED_COLUMNS[kind]
    prompt = prompt_messages(record, prompt_field)
    text_1, text_2 = _response(record, first), _response(record, second)
    strength = _signed_strength(record, strength_field)
    if strength == 0:
        return 0, None
    chosen, rejected = (text_1, text_2) if strength < 0 else (text_2, text_1)  # negative: response 1 is better
    return strength, PreferencePair(prompt, chosen, rejected, float(abs(strength)), record.where())


def _signed_strength(record: Record, field_name: str) -> int:
    if field_name not in record.data or record.data[field_name] is None:
        raise Hs2Error(f"{record.where(field_name)}: missing preference strength (a whole number from -3 to 3)")
    value = record.data[field_name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise Hs2Error(f"{record.where(field_name)}: expected a whole number from -3 to 3, got {value!r}")
    if not -MAX_STRENGTH <= value <= MAX_STRENGTH:
        raise Hs2Error(f"{record.where(field_name)}: strength {value!r} is outside -3..3")
    if value != int(value):
        raise Hs2Error(f"{record.where(field_name)}: strength {value!r} is not a whole number (the scale is -3..3)")
    return int(value)


def _response(record: Record, field_name: str) -> str:
    value = record.data.get(field_name)
    if value is None:
        raise Hs2Error(f"{record.where(field_name)}: missing response")
    if not isinstance(value, str):
        raise Hs2Error(f"{record.where(field_name)}: expected the response as a string, got {type(value).__name__}")
    if not value.strip():
        raise Hs2Error(f"{record.where(field_name)}: empty response")
    return value


def _chosen_rejected_pair(record: Record) -> tuple[int, PreferencePair]:
    margin = _margin(record)
    chosen, rejected = (_completion(record, key) for key in ("chosen", "rejected"))
    if "prompt" in record.data:
        prompt = prompt_messages(record)
        for key, value in (("chosen", chosen), ("rejected", rejected)):
            if isinstance(value, list) and len(value) != 1:
                raise Hs2Error(f"{record.where(key)}: with a 'prompt' column, expected one assistant message "
                               f"(got {len(value)} messages)")
    else:  # TRL's implicit prompt: two conversations that differ only in their last (assistant) message
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise Hs2Error(f"{record.where('prompt')}: missing prompt (needed when chosen/rejected are plain text)")
        prompt = chosen[:-1]
        if not prompt or prompt[-1]["role"] != "user":
            raise Hs2Error(f"{record.where('chosen')}: missing prompt: without a 'prompt' column, chosen must be the "
                           "whole conversation, ending on a user turn and then the assistant's answer")
        if rejected[:-1] != prompt:
            raise Hs2Error(f"{record.where('rejected')}: chosen and rejected must share every message but the last "
                           "(their prompt)")
    texts = [value if isinstance(value, str) else value[-1]["content"] for value in (chosen, rejected)]
    return math.ceil(margin), PreferencePair(prompt, texts[0], texts[1], margin, record.where())


def _completion(record: Record, key: str) -> str | list[dict[str, str]]:
    value = record.data.get(key)
    if value is None:
        raise Hs2Error(f"{record.where(key)}: missing response")
    if isinstance(value, str):
        if not value.strip():
            raise Hs2Error(f"{record.where(key)}: empty response")
        return value
    messages = validate_messages(value, record, key)
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise Hs2Error(f"{record.where(key)}: the last message must be a non-empty assistant turn")
    return messages


def _margin(record: Record) -> float:
    if "margin" not in record.data or record.data["margin"] is None:
        return 1.0
    value = record.data["margin"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Hs2Error(f"{record.where('margin')}: expected a number > 0, got {value!r}")
    if value <= 0:
        raise Hs2Error(f"{record.where('margin')}: margin {value!r} must be > 0 (a margin of 0 is no preference)")
    return float(value)
