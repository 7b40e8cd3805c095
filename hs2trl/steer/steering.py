"""SteerLM attribute conditioning: the one place where attribute values become part of a prompt.

A SteerLM model is told which response to write by an attribute string,
`helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2` (attributes in the order of
`hs2trl.rm.attributes.ATTRIBUTES`, integer levels 0-4), placed where the chat template puts a system message. The same
`condition` function builds the prompts of SteerLM SFT rows (`hs2 steerlm`), of SteerLM 2.0 sampling and training
(`hs2 steerlm2`) and of inference (`hs2 generate`), so training and use never drift apart.

A conversation that already has a system message keeps it: the attribute string becomes the first line of that
system message, followed by a blank line and the original text. A conversation without one gets a system message
holding only the attribute string (so a template's default system prompt, e.g. SmolLM2's "You are a helpful AI
assistant named SmolLM...", is not used in conditioned prompts). `split_condition` undoes `condition`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from hs2trl.rm.attributes import ATTRIBUTES
from hs2trl.runtime.errors import Hs2Error

MIN_LEVEL, MAX_LEVEL = 0, 4
# Paper §4.5 / SteerLM model cards: the attributes used to answer at inference time.
DEFAULT_INFERENCE_ATTRIBUTES: dict[str, int] = {
    "helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 2,
}
_SEPARATOR = "\n\n"  # between the attribute string and an original system message
_PAIR = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*:\s*(-?\d+(?:\.\d+)?)\s*$")

AttributeValues = Mapping[str, int] | Sequence[int]


def _level(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise Hs2Error(f"attribute '{name}': expected an integer level {MIN_LEVEL}-{MAX_LEVEL}, got {value!r}")
    if not MIN_LEVEL <= int(value) <= MAX_LEVEL:
        raise Hs2Error(f"attribute '{name}': level {value!r} is outside {MIN_LEVEL}-{MAX_LEVEL}")
    return int(value)


def attribute_values(values: AttributeValues, attributes: Sequence[str] = ATTRIBUTES) -> dict[str, int]:
    """A mapping or a sequence of levels -> `{name: level}` in `attributes` order (validated)."""
    if isinstance(values, str):
        return parse_attribute_string(values, attributes)
    if isinstance(values, Mapping):
        unknown = [k for k in values if k not in attributes]
        missing = [a for a in attributes if a not in values]
        if unknown or missing:
            problems = ([f"unknown {', '.join(unknown)}"] if unknown else []) + (
                [f"missing {', '.join(missing)}"] if missing else [])
            raise Hs2Error(f"attributes: {'; '.join(problems)} (expected {', '.join(attributes)})")
        return {a: _level(a, values[a]) for a in attributes}
    values = list(values)
    if len(values) != len(attributes):
        raise Hs2Error(f"attributes: {len(values)} levels given for {len(attributes)} attributes "
                       f"({', '.join(attributes)})")
    return {a: _level(a, v) for a, v in zip(attributes, values)}


def attribute_string(values: AttributeValues, attributes: Sequence[str] = ATTRIBUTES) -> str:
    """`{helpfulness: 4, ...}` or `[4, 4, 4, 2, 2]` ->
    `'helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2'`."""
    return ",".join(f"{name}:{level}" for name, level in attribute_values(values, attributes).items())


def parse_attribute_string(text: str, attributes: Sequence[str] = ATTRIBUTES,
                           defaults: Mapping[str, int] | None = None) -> dict[str, int]:
    """`'helpfulness:4,...'` -> `{name: level}` in `attributes` order; the inverse of `attribute_string`.

    With `defaults`, attributes the string leaves out take their default level (e.g. `--attributes verbosity:0`)."""
    if not isinstance(text, str) or not text.strip():
        raise Hs2Error("attributes: empty attribute string (expected e.g. 'helpfulness:4,correctness:4,...')")
    parsed: dict[str, int] = {}
    for piece in text.split(","):
        match = _PAIR.match(piece)
        if match is None:
            raise Hs2Error(f"attributes: '{piece.strip()}' in '{text}' is not name:level")
        name, value = match.group(1), float(match.group(2))
        if name not in attributes:
            raise Hs2Error(f"attributes: unknown attribute '{name}' in '{text}' (known: {', '.join(attributes)})")
        if name in parsed:
            raise Hs2Error(f"attributes: '{name}' appears twice in '{text}'")
        parsed[name] = _level(name, value)
    if defaults is not None:
        parsed = {**{a: defaults[a] for a in attributes if a in defaults}, **parsed}
    return attribute_values(parsed, attributes)


def condition(messages: Sequence[Mapping[str, str]], values: AttributeValues,
              attributes: Sequence[str] = ATTRIBUTES) -> list[dict[str, str]]:
    """Chat messages -> the same messages with the attribute string in the system message (see the module doc).

    Idempotent on the attribute part: an already conditioned conversation has its attribute line replaced."""
    tag = attribute_string(values, attributes)
    _, plain = split_condition(messages, attributes)
    if plain and plain[0]["role"] == "system":
        original = plain[0]["content"]
        system = {**plain[0], "content": f"{tag}{_SEPARATOR}{original}" if original.strip() else tag}
        return [system, *[dict(m) for m in plain[1:]]]
    return [{"role": "system", "content": tag}, *[dict(m) for m in plain]]


def split_condition(messages: Sequence[Mapping[str, str]], attributes: Sequence[str] = ATTRIBUTES
                    ) -> tuple[dict[str, int] | None, list[dict[str, str]]]:
    """(levels, messages without them) for a conditioned conversation; (None, messages) for a plain one."""
    messages = [dict(m) for m in messages]
    if not messages or messages[0].get("role") != "system":
        return None, messages
    content = messages[0]["content"]
    first, _, rest = content.partition(_SEPARATOR)
    try:
        values = parse_attribute_string(first.strip(), attributes) if first.strip() and "\n" not in first else None
    except Hs2Error:
        values = None
    if values is None:
        return None, messages
    if rest.strip():
        return values, [{**messages[0], "content": rest}, *messages[1:]]
    return values, messages[1:]
