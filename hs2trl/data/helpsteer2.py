"""HelpSteer2-format rows: validation, multi-turn prompts as chat messages, regression examples.

A HelpSteer2 row has `prompt`, `response` and one integer score in 0..4 per attribute. Multi-turn prompts carry the
earlier turns inline: `{user 1}\\n<extra_id_1>Assistant\\n{assistant 1}\\n<extra_id_1>User\\n{user 2}`; they become
chat messages here so that every model sees them through its own chat template.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from hs2trl.data.records import Record
from hs2trl.runtime.errors import Hs2Error

_TURN_MARKER = re.compile(r"\n?<extra_id_1>(User|Assistant)\n?")
_ROLES = {"User": "user", "Assistant": "assistant"}
PREFERENCE_COLUMNS = ("chosen", "rejected")

# HelpSteer2's five attribute columns, in the order used everywhere: labels, model heads (id2label), weights,
# attribute strings; each scored 0-4 by annotators.
ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
MIN_SCORE, MAX_SCORE = 0.0, 4.0


def prompt_to_messages(prompt: str) -> list[dict[str, str]]:
    """A HelpSteer2 prompt (possibly multi-turn, with `<extra_id_1>` markers) -> chat messages ending on a
    user turn."""
    pieces = _TURN_MARKER.split(prompt)
    messages = [{"role": "user", "content": pieces[0]}]
    for role, content in zip(pieces[1::2], pieces[2::2]):
        messages.append({"role": _ROLES[role], "content": content})
    return messages


def messages_to_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The inverse of `prompt_to_messages`, for writing HelpSteer2-format files."""
    out = messages[0]["content"]
    for m in messages[1:]:
        out += f"\n<extra_id_1>{'User' if m['role'] == 'user' else 'Assistant'}\n{m['content']}"
    return out


def detect_format(records: Sequence[Record]) -> str:
    """'preference' (chosen/rejected pairs, Bradley-Terry) or 'regression' (attribute scores)."""
    if not records:
        raise Hs2Error("dataset is empty")
    first = records[0].data
    if all(col in first for col in PREFERENCE_COLUMNS):
        return "preference"
    return "regression"


def validate_messages(value: Any, record: Record, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise Hs2Error(f"{record.where(field)}: expected a non-empty list of chat messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise Hs2Error(f"{record.where(field)}: message {i} must be an object with string 'role' and 'content'")
    return value


def prompt_messages(record: Record, field: str = "prompt") -> list[dict[str, str]]:
    """The row's prompt as chat messages: a HelpSteer2 string (multi-turn markers expanded) or a message list."""
    if field not in record.data:
        raise Hs2Error(f"{record.where(field)}: missing column")
    value = record.data[field]
    if isinstance(value, str):
        if not value.strip():
            raise Hs2Error(f"{record.where(field)}: empty prompt")
        messages = prompt_to_messages(value)
    else:
        messages = validate_messages(value, record, field)
    if messages[-1]["role"] != "user":
        raise Hs2Error(f"{record.where(field)}: the prompt must end with a user turn")
    return messages


def response_text(record: Record, field: str = "response") -> str:
    return record.text(field, empty="empty response")


def attribute_scores(record: Record, attributes: Sequence[str] = ATTRIBUTES,
                     required: bool = True) -> list[float | None]:
    """One score per attribute in 0..4; a missing or null score is None (masked out of the loss, never invented)."""
    scores: list[float | None] = []
    for name in attributes:
        value = record.data.get(name)
        if value is None:
            scores.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Hs2Error(f"{record.where(name)}: expected a number in 0-4, got {value!r}")
        if math.isnan(value) or not MIN_SCORE <= value <= MAX_SCORE:
            raise Hs2Error(f"{record.where(name)}: score {value!r} is outside 0-4")
        scores.append(float(value))
    if required and all(s is None for s in scores):
        raise Hs2Error(f"{record.where(attributes[0])}: no attribute scores in this row "
                       f"(expected {', '.join(attributes)})")
    return scores


def conversation(record: Record) -> list[dict[str, str]]:
    """The full conversation of a row: `messages` ending on the assistant turn, or `prompt` + `response`."""
    if "messages" in record.data and "response" not in record.data:
        messages = validate_messages(record.data["messages"], record, "messages")
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise Hs2Error(f"{record.where('messages')}: the last message must be a non-empty assistant turn")
        return messages
    return prompt_messages(record) + [{"role": "assistant", "content": response_text(record)}]


def regression_examples(records: Sequence[Record], attributes: Sequence[str] = ATTRIBUTES) -> list[dict[str, Any]]:
    """Validated rows -> `{"messages": [...], "labels": [score or NaN]}`; the first bad row raises `Hs2Error`."""
    examples = []
    for record in records:
        labels = [math.nan if s is None else s for s in attribute_scores(record, attributes)]
        examples.append({"messages": conversation(record), "labels": labels})
    return examples
