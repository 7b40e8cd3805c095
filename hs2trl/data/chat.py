"""Chat messages -> token ids, with the one rule every reward reading in hs2trl depends on.

The reward head reads the hidden state of the token that closes the response: the chat template's end-of-turn token
(`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3). So a conversation is rendered with the model's chat template and
any whitespace after that token is dropped; the sequence then *ends* on it. The pad token is always a different token
(`modeling.load_tokenizer`), so `*ForSequenceClassification` (rightmost non-pad token), TRL's PPO `get_reward` (token
before the first pad) and hs2trl's own scorer all read the same position.
"""

from __future__ import annotations

from collections.abc import Sequence

from hs2trl.runtime.errors import Hs2Error


def render(tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    if tokenizer.chat_template is None:
        raise Hs2Error(
            f"tokenizer '{tokenizer.name_or_path}' has no chat template: set one with --chat_template_path "
            "(a .jinja file or a tokenizer id)"
        )
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_conversation(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """A full conversation (ending on an assistant turn) -> ids ending on the end-of-turn token."""
    text = render(tokenizer, messages).rstrip()
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """A prompt (ending on a user turn) -> ids ending with the assistant header, ready for `generate`."""
    return tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn in this tokenizer's chat template."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    return encode_conversation(tokenizer, probe)[-1]
