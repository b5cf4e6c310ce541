"""Turning persona items into token ids, with a mask of the tokens that count.

Chats go through the tokenizer's own chat template as token ids; narratives are plain text. Templates that
reject system turns (Gemma) get the system text folded into the first user turn. Base models
(`model.chat=false`, e.g. GPT-2, Gemma-2-2B) get a plain-text transcript instead of a template:

    <BOS>{system}\n\nUser: {user}\nAssistant: {assistant}\nUser: ...\nAssistant:

and their replies end where the model starts a new "User:" or "Assistant:" line.
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


def content_spans(text: str, contents: list[str]) -> list[tuple[int, int]]:
    """Character spans of each message's content in a rendered chat, found in order."""
    spans, at = [], 0
    for content in contents:
        start = text.index(content, at)
        spans.append((start, start + len(content)))
        at = start + len(content)
    return spans


def dedupe_bos(ids: list[int], bos_id: int | None) -> list[int]:
    """Chat templates that write BOS themselves plus a tokenizer that adds one give two: keep one."""
    while bos_id is not None and len(ids) >= 2 and ids[0] == bos_id and ids[1] == bos_id:
        ids = ids[1:]
    return ids


def supports_system(tokenizer) -> bool:
    """Whether the chat template accepts a system turn (Gemma-2/3's raise "System role not supported")."""
    from jinja2 import TemplateError

    if tokenizer.chat_template is None:
        return False
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


TRANSCRIPT_ROLES = {"user": "User", "assistant": "Assistant"}
TRANSCRIPT_STOPS = ("\nUser:", "\nAssistant:")
"""Where a base model's reply ends: the start of a turn it made up."""


class ChatEncodingError(ValueError):
    """A chat the model's template cannot express; the message says why."""


def use_transcript(tokenizer) -> None:
    """Mark the tokenizer of a base model (`model.chat=false`): chats become a plain-text transcript."""
    tokenizer._psm_transcript = True


def is_transcript(tokenizer) -> bool:
    return bool(getattr(tokenizer, "_psm_transcript", False))


def chat_format(tokenizer) -> str:
    """How chats are written for this model, for the run manifest."""
    if is_transcript(tokenizer):
        return "plain-text transcript (model.chat=false): " + " / ".join(f"'{r}:'" for r in TRANSCRIPT_ROLES.values())
    return f"the tokenizer's chat template; system turns {system_role_handling(tokenizer)}"


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _transcript_prompt(tokenizer, messages: list[Message]) -> list[int]:
    ids = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    for m in messages:
        if m["role"] == "system":
            ids += text_ids(tokenizer, m["content"] + "\n\n")
        elif m["role"] in TRANSCRIPT_ROLES:
            ids += text_ids(tokenizer, f"{TRANSCRIPT_ROLES[m['role']]}: {m['content']}\n")
        else:
            raise ChatEncodingError(f"role '{m['role']}' has no place in a plain-text transcript")
    return ids + text_ids(tokenizer, f"{TRANSCRIPT_ROLES['assistant']}:")


def cut_made_up_turn(tokenizer, ids: list[int]) -> list[int]:
    """A base model's reply up to (not including) the first turn it starts on its own."""
    text = tokenizer.decode(ids)
    cut = min((i for i in (text.find(s) for s in TRANSCRIPT_STOPS) if i >= 0), default=-1)
    if cut < 0:
        return ids
    return ids[:max(k for k in range(len(ids) + 1) if len(tokenizer.decode(ids[:k])) <= cut)]


def _template_ids(tokenizer, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    from jinja2 import TemplateError

    if tokenizer.chat_template is None:
        raise ChatEncodingError("the tokenizer has no chat template; a base model needs model.chat=false")
    if not supports_system(tokenizer):
        messages = fold_system(messages)
    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    except TemplateError as err:
        roles = "/".join(m["role"] for m in messages)
        raise ChatEncodingError(f"the chat template rejects a chat with turns {roles}: {err}") from err
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return dedupe_bos(list(ids), tokenizer.bos_token_id)


def encode_prompt(tokenizer, messages: list[Message]) -> list[int]:
    """Token ids of a chat ready for the assistant to reply (generation prompt appended)."""
    if is_transcript(tokenizer):
        return _transcript_prompt(tokenizer, messages)
    return _template_ids(tokenizer, messages, add_generation_prompt=True)


def encode_chat(tokenizer, messages: list[Message]) -> Encoded:
    """Encode a chat ending in an assistant turn; the mask covers that turn's content tokens."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a chat to encode must end with an assistant turn")
    prefix = encode_prompt(tokenizer, messages[:-1])
    if is_transcript(tokenizer):  # built piece by piece, so the reply's tokens are known exactly
        content = text_ids(tokenizer, " " + messages[-1]["content"])
        end = text_ids(tokenizer, "\n")
        return Encoded(prefix + content + end, [False] * len(prefix) + [True] * len(content) + [False] * len(end))
    full = _template_ids(tokenizer, messages, add_generation_prompt=False)
    if full[: len(prefix)] != prefix:
        raise ValueError("chat template is not prefix-stable; cannot locate the assistant turn")
    content = text_ids(tokenizer, messages[-1]["content"])
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
    """Encode plain text; BOS only when the SAE was trained with it, and never counted, nor any other special
    token the text spells out (markup, not text).

    Positions before `first_position` (the SAE's training `seqpos_slice` start: the attention sink, whose
    residual norm is ~100x the rest in SmolLM2) are not counted either."""
    ids = text_ids(tokenizer, text)
    if prepend_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    special = set(tokenizer.all_special_ids)
    return Encoded(ids, [i >= first_position and t not in special for i, t in enumerate(ids)])
