"""The request bodies `hs2 serve-rm` reads, validated into what it scores; each error names the field and item.

- `POST /v1/score`: `{"conversations": [[{"role", "content"}, ...], ...]}` (each ending on an assistant turn) or
  `{"rows": [{"prompt": ..., "response": ...}, ...]}` (HelpSteer2 rows, multi-turn `<extra_id_1>` prompts and
  chat-message prompts as `hs2 annotate` reads them, through the same functions); optional `"max_length"` (tokens per
  item, at most the server's).
- `POST /get_reward` (OpenRLHF's remote RM, `--remote_rm_url`): `{"query": [full texts], "prompts": [...],
  "labels": [...]}`; `query` is read, `prompts` and `labels` are checked to match it in length when given.
"""

from __future__ import annotations

from typing import Any

from hs2trl.data.helpsteer2 import conversation
from hs2trl.data.records import Record
from hs2trl.runtime.errors import Hs2Error


class BadRequest(Exception):
    """A client's mistake: `status` (400, 413) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BadRequest(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _items(body: dict, field: str, max_items: int) -> list:
    items = body[field]
    if not isinstance(items, list) or not items:
        raise BadRequest(400, f"{field}: expected a non-empty list")
    if len(items) > max_items:
        raise BadRequest(413, f"{field}: {len(items)} items, more than this server's --max-items {max_items}")
    return items


def score_request(body: Any, max_items: int) -> tuple[list[list[dict]], int | None]:
    """(conversations to score, the request's max_length or None)."""
    body = _object(body)
    given = [f for f in ("conversations", "rows") if f in body]
    if len(given) != 1:
        raise BadRequest(400, "expected one of the fields 'conversations' (chat messages) or 'rows' "
                              "(prompt/response)" + (", not both" if len(given) == 2 else ""))
    field = given[0]
    conversations = []
    for i, item in enumerate(_items(body, field, max_items)):
        if field == "rows" and not isinstance(item, dict):
            raise BadRequest(400, f"rows[{i}]: expected an object with 'prompt' and 'response'")
        data = item if field == "rows" else {"messages": item}
        try:  # the same parsing as `hs2 annotate`'s rows: the same conversation, so the same numbers
            conversations.append(conversation(Record(f"{field}[{i}]", None, data)))
        except Hs2Error as err:  # a conversation item has no field of its own: name the item only
            raise BadRequest(400, str(err).replace(": field 'messages'", "")) from None
    return conversations, _max_length(body)


def _max_length(body: dict) -> int | None:
    value = body.get("max_length")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(400, f"max_length: expected a positive integer, got {value!r}")
    return value


def get_reward_request(body: Any, max_items: int) -> list[str]:
    """The full texts (prompt + response, as the policy rendered them) of an OpenRLHF remote-RM request."""
    body = _object(body)
    if "query" not in body:
        raise BadRequest(400, "query: missing field (a list of full texts: prompt + response)")
    queries = _items(body, "query", max_items)
    for i, text in enumerate(queries):
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(400, f"query[{i}]: expected a non-empty string")
    for field in ("prompts", "labels"):
        value = body.get(field)
        if value is not None and (not isinstance(value, list) or len(value) != len(queries)):
            raise BadRequest(400, f"{field}: expected a list as long as query ({len(queries)})")
    return queries


def query_ids(tokenizer, text: str, end_of_turn: str) -> list[int]:
    """An OpenRLHF query -> ids ending on the end-of-turn token, as `data.chat.encode_conversation` ends them.

    The query was rendered by the policy's chat template (the RM's, for the numbers to match a `/v1/score` of the
    same messages); padding and trailing whitespace are dropped, and an unclosed response (cut at the token limit)
    is closed with the end-of-turn token, where the head reads."""
    pad = tokenizer.pad_token
    if pad:
        text = text.replace(pad, "")
    text = text.rstrip()
    if not text.endswith(end_of_turn):
        text += end_of_turn
    return tokenizer(text, add_special_tokens=False)["input_ids"]
