"""Turning persona items into token ids, with a mask of the tokens that count.

Chats go through the tokenizer's own chat template as token ids; narratives are plain text. Templates that
reject system turns (Gemma) get the system text folded into the first user turn.
The mask marks the tokens a finder should read: every text token of a narrative, and the
content tokens of the final assistant turn of a chat (never BOS, role headers or end-of-turn).
"""

from __future__ import annotations

from dataclasses import dataclass

Message = dict[str, str]


@dataclass
class Encoded:
    """Token ids of one item plus the positions that belong to the measured text."""

    ids: list[int]
    mask: list[bool]


def dedupe_bos(ids: list[int], bos_id: int | None) -> list[int]:
    """Chat templates that write BOS themselves plus a tokenizer that adds one give two: keep one."""
    while bos_id is not None and len(ids) >= 2 and ids[0] == bos_id and ids[1] == bos_id:
        ids = ids[1:]
    return ids


def supports_system(tokenizer) -> bool:
    """Whether the chat template accepts a system turn (Gemma-2/3's raise "System role not supported")."""
    from jinja2 import TemplateError

    cached = getattr(tokenizer, "_psm_supports_system", None)
    if cached is None:
        try:
            tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                          tokenize=False)
            cached = True
        except TemplateError:
            cached = False
        tokenizer._psm_supports_system = cached
    return cached


def fold_system(messages: list[Message]) -> list[Message]:
    """For templates without a system role: the system text leads the first user turn, as Gemma's docs advise."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}] + rest[1:]
    return [{"role": "user", "content": system}] + rest


def system_role_handling(tokenizer) -> str:
    """What happens to system turns with this tokenizer, for the run manifest."""
    return "native" if supports_system(tokenizer) else "folded into the first user turn"


def _template_ids(tokenizer, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    if not supports_system(tokenizer):
        messages = fold_system(messages)
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return dedupe_bos(list(ids), tokenizer.bos_token_id)


def encode_prompt(tokenizer, messages: list[Message]) -> list[int]:
    """Token ids of a chat ready for the assistant to reply (generation prompt appended)."""
    return _template_ids(tokenizer, messages, add_generation_prompt=True)


def encode_chat(tokenizer, messages: list[Message]) -> Encoded:
    """Encode a chat ending in an assistant turn; the mask covers that turn's content tokens."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a chat to encode must end with an assistant turn")
    prefix = encode_prompt(tokenizer, messages[:-1])
    full = _template_ids(tokenizer, messages, add_generation_prompt=False)
    if full[: len(prefix)] != prefix:
        raise ValueError("chat template is not prefix-stable; cannot locate the assistant turn")
    content = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    mask = [False] * len(full)
    end = len(prefix) + len(content)
    if full[len(prefix):end] == content:
        for i in range(len(prefix), end):
            mask[i] = True
    else:  # tokenization merged across the boundary: take the turn up to its first special token
        for i in range(len(prefix), len(full)):
            if full[i] in special:
                break
            mask[i] = True
    return Encoded(full, mask)


def encode_text(tokenizer, text: str, prepend_bos: bool, first_position: int = 0) -> Encoded:
    """Encode plain text; BOS only when the SAE was trained with it, and never counted.

    Positions before `first_position` (the SAE's training `seqpos_slice` start: the attention sink, whose
    residual norm is ~100x the rest in SmolLM2) are not counted either."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
        mask = [False] + [True] * (len(ids) - 1)
    else:
        mask = [True] * len(ids)
    return Encoded(ids, [m and i >= first_position for i, m in enumerate(mask)])
