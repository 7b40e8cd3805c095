"""Conversations as chat messages, from the layouts the paper's SFT and alignment data come in.

- `messages`: TRL's conversational format, `[{"role", "content"}, ...]`, used as is.
- `conversations` + optional `system`: nvidia/Daring-Anteater (`{"from": "User" | "Assistant", "value": ...}`) and
  other ShareGPT-style sets (`human`/`gpt`).
- `prompt` + `response`: HelpSteer2 rows (multi-turn prompts expanded), or `prompt` + `completion`.
- OpenAssistant message trees (OpenAssistant/oasst1, oasst2: one row per message with `message_id`, `parent_id`,
  `role`, `text`): every root-to-leaf thread becomes one conversation ending on an assistant turn.

`sft_examples` turns a dataset into SFT rows `{"messages": [...]}`; `distinct_prompts` gives each prompt once (chat
messages ending on a user turn) for sampling in iterative DPO.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hs2trl.data.helpsteer2 import conversation as helpsteer2_conversation
from hs2trl.data.helpsteer2 import prompt_messages, validate_messages
from hs2trl.data.records import Record
from hs2trl.runtime.errors import Hs2Error

# Speaker names seen in ShareGPT-style data (Daring Anteater: User/Assistant/System; ShareGPT: human/gpt).
ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "system": "system",
}
OASST_COLUMNS = ("message_id", "parent_id", "role", "text")


def from_value_turns(turns: Any, record: Record, field: str = "conversations") -> list[dict[str, str]]:
    """`[{"from": "User", "value": "..."}, ...]` -> chat messages."""
    if not isinstance(turns, list) or not turns:
        raise Hs2Error(f"{record.where(field)}: expected a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        if (not isinstance(turn, dict) or not isinstance(turn.get("from"), str)
                or not isinstance(turn.get("value"), str)):
            raise Hs2Error(f"{record.where(field)}: turn {i} must be an object with string 'from' and 'value'")
        role = ROLE_ALIASES.get(turn["from"].strip().lower())
        if role is None:
            raise Hs2Error(
                f"{record.where(field)}: turn {i}: unknown speaker {turn['from']!r} (expected User/Assistant/System, "
                "human/gpt)"
            )
        messages.append({"role": role, "content": turn["value"]})
    return messages


def conversation_messages(record: Record) -> list[dict[str, str]]:
    """The whole conversation of one row as chat messages (system message first when the row has one)."""
    data = record.data
    if "conversations" in data:
        messages = from_value_turns(data["conversations"], record)
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise Hs2Error(f"{record.where('system')}: expected a string")
        if system and system.strip() and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return messages
    if "messages" in data:
        return validate_messages(data["messages"], record, "messages")
    if "prompt" in data and "response" in data:
        return helpsteer2_conversation(record)
    if "prompt" in data and "completion" in data:
        completion = data["completion"]
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        return prompt_messages(record) + validate_messages(completion, record, "completion")
    raise Hs2Error(
        f"{record.where()}: no conversation in this row (expected 'messages', 'conversations' as in Daring Anteater, "
        "'prompt' + 'response' as in HelpSteer2, 'prompt' + 'completion', or OpenAssistant message rows); "
        f"columns: {', '.join(sorted(data)) or 'none'}"
    )


def sft_conversation(record: Record) -> list[dict[str, str]]:
    """A row's conversation, checked to end on a non-empty assistant turn (what SFT learns to produce)."""
    messages = conversation_messages(record)
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise Hs2Error(f"{record.where()}: the conversation must end on a non-empty assistant turn")
    return messages


def is_oasst_tree(records: Sequence[Record]) -> bool:
    return bool(records) and all(col in records[0].data for col in OASST_COLUMNS)


@dataclass
class OasstThreads:
    conversations: list[list[dict[str, str]]]
    messages: int
    skipped: int  # deleted, failed review, or below a skipped message

    def summary(self) -> str:
        return (
            f"OpenAssistant message trees: {self.messages} messages -> {len(self.conversations)} conversations "
            f"({self.skipped} messages skipped: deleted, failed review, or under such a message)"
        )


def oasst_threads(records: Sequence[Record]) -> OasstThreads:
    """Every root-to-leaf thread of OpenAssistant message trees, cut after its last assistant message, once each."""
    children: dict[Any, list[Record]] = {}
    kept = 0
    for r in records:
        if r.data.get("deleted") is True or r.data.get("review_result") is False:
            continue
        role = r.data.get("role")
        if role not in ("prompter", "assistant") or not isinstance(r.data.get("text"), str):
            raise Hs2Error(f"{r.where('role')}: expected role 'prompter' or 'assistant' and a string 'text'")
        children.setdefault(r.data.get("parent_id"), []).append(r)
        kept += 1
    conversations, seen, reached = [], set(), 0
    stack = [(root, []) for root in reversed(children.get(None, []))]
    while stack:  # depth-first, iterative: threads can be long
        node, path = stack.pop()
        reached += 1
        path = path + [{"role": ROLE_ALIASES[node.data["role"]], "content": node.data["text"]}]
        below = children.get(node.data["message_id"], [])
        if below:
            stack.extend((child, path) for child in reversed(below))
            continue
        while path and path[-1]["role"] != "assistant":  # an unanswered prompt at the leaf: cut back
            path = path[:-1]
        key = json.dumps(path, sort_keys=True)
        if path and key not in seen:
            seen.add(key)
            conversations.append(path)
    return OasstThreads(conversations, messages=len(records), skipped=len(records) - reached)


def sft_examples(records: Sequence[Record]) -> tuple[list[dict[str, Any]], str | None]:
    """A dataset -> SFT rows `{"messages": [...]}` (and a line on what was converted, for message trees)."""
    if is_oasst_tree(records):
        threads = oasst_threads(records)
        return [{"messages": c} for c in threads.conversations], threads.summary()
    return [{"messages": sft_conversation(r)} for r in records], None


def prompt_of(record: Record) -> list[dict[str, str]]:
    """The prompt of a row as chat messages ending on a user turn: the `prompt` column (HelpSteer2 string or
    messages), or the conversation without its final assistant turn (Daring Anteater, `messages` rows)."""
    if "prompt" in record.data:
        return prompt_messages(record)
    messages = conversation_messages(record)
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise Hs2Error(f"{record.where()}: no prompt: the conversation does not end with a user turn (or a user turn "
                       "followed by one assistant answer)")
    return messages


def distinct_prompts(records: Sequence[Record]) -> tuple[list[list[dict[str, str]]], int]:
    """Each distinct prompt once, in first-seen order (HelpSteer2 rows share prompts in pairs); returns the prompts
    and how many rows repeated an earlier prompt."""
    prompts, seen = [], set()
    for r in records:
        messages = prompt_of(r)
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            prompts.append(messages)
    return prompts, len(records) - len(prompts)
