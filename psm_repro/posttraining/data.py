"""Training data for `posttrain`: assistant chats for SFT and narrative text for the control, both project data.

Both come from one built corpus's training split (held-out documents are never trained on). Chats are parsed
back into their turns (ChatML, the format the embedded chat model wrote them in) and laid out in the model's own
chat format, so a base model learns the transcript it is run in. The control gets one narrative token window
per SFT chat, of the same length: the same steps, the same batch shapes, the same token count.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from psm_repro.core.chat import encode_chat, encode_prompt, text_ids
from psm_repro.em.finetune import IGNORE  # the label value the HF loss skips, as the EM fine-tunes use it
from psm_repro.sae_training.corpus_build import CorpusError
from psm_repro.sae_training.corpus_retokenize import parse_chatml, template_default_system
from psm_repro.sae_training.data import Corpus



@dataclass
class Example:
    """One training sequence: token ids and labels (IGNORE where no loss is taken)."""

    ids: list[int]
    labels: list[int]


@dataclass
class Chat:
    messages: list[dict]
    prompt_index: int


def corpus_chats(corpus: Corpus, source_tok, split: str = "train") -> list[Chat]:
    """The closed chats of a corpus split as message lists (the source template's own default system turn
    dropped, as the retokenized corpus drops it); chats cut at the generation limit are left out, since their
    turn never ends."""
    default = template_default_system(source_tok)
    out = []
    for doc in getattr(corpus, split)["chats"]:
        messages, closed = parse_chatml(source_tok.decode(doc.ids))
        if messages and messages[0]["role"] == "system" and messages[0]["content"] == default:
            messages = messages[1:]
        if closed and messages and messages[-1]["role"] == "assistant" and messages[-1]["content"].strip():
            out.append(Chat(messages, doc.prompt_index))
    if not out:
        raise CorpusError(f"posttrain: the corpus has no closed {split} chats to train or read on")
    return out


def sft_example(tokenizer, messages: list[dict]) -> Example:
    """The chat in the model's format, loss on the last assistant turn and its end of turn only."""
    start = len(encode_prompt(tokenizer, messages[:-1]))
    ids = encode_chat(tokenizer, messages).ids
    return Example(ids, [IGNORE] * start + ids[start:])


def sft_examples(tokenizer, chats: list[Chat], n: int, max_tokens: int, seed: int) -> tuple[list[Example], list[Chat]]:
    """`n` seeded chats of at most `max_tokens` tokens, and the chats not drawn (for the diff)."""
    order = list(range(len(chats)))
    random.Random(seed).shuffle(order)
    picked, rest = [], []
    for i in order:
        ex = sft_example(tokenizer, chats[i].messages) if len(picked) < n else None
        if ex is not None and len(ex.ids) <= max_tokens:
            picked.append(ex)
        else:
            rest.append(chats[i])
    if len(picked) < n:
        raise CorpusError(f"posttrain.chats: asked for {n} chats of <= {max_tokens} tokens, the corpus has "
                          f"{len(picked)}")
    return picked, rest


def control_examples(tokenizer, corpus: Corpus, source_tok, lengths: list[int], seed: int) -> list[Example]:
    """Narrative windows of exactly `lengths` tokens (BOS first, loss on every token after it), cut in order
    from a seeded shuffle of the training narratives, each read as plain text by the model's tokenizer."""
    docs = list(corpus.train["narrative"])
    random.Random(seed).shuffle(docs)
    bos = tokenizer.bos_token_id
    stream: list[int] = []
    need = sum(n - 1 for n in lengths)
    for d in docs:
        if len(stream) >= need:
            break
        stream += text_ids(tokenizer, source_tok.decode(d.ids, skip_special_tokens=True).strip() + "\n\n")
    if len(stream) < need:
        raise CorpusError(f"posttrain: the corpus's narratives hold {len(stream)} tokens, the control needs {need}")
    out, at = [], 0
    for n in lengths:
        window = ([bos] if bos is not None else []) + stream[at:at + n - (bos is not None)]
        at += n - (bos is not None)
        out.append(Example(window, [IGNORE] + window[1:]))
    return out
