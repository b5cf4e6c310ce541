"""A corpus built for one model, re-encoded for another (`corpus.retokenize`).

The source corpus's documents are decoded with the tokenizer that built them (the manifest's `model`; corpora
from before that field were built by the embedded default) and encoded again for the target: narrative and
Shakespeare as plain text, chats parsed back into their turns and laid out in the target's chat format
(`encode_chat`: its template, or the plain-text transcript of a base model). Prompt indices are kept, so the
held-out split is the same documents in both corpora.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from psm_repro.core.chat import encode_chat, encode_prompt, text_ids
from psm_repro.core.embedded import DEFAULT, EMBEDDED
from psm_repro.core.paths import project_path

CHATML_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(<\|im_end\|>|$)", re.S)
"""SmolLM2's chat template (ChatML): the only source format a committed corpus has."""


def source_model(corpus_dir: str) -> str:
    """The embedded model whose tokenizer built the corpus in `corpus_dir`."""
    from psm_repro.sae_training.corpus_build import CorpusError

    path = project_path(corpus_dir) / "manifest.json"
    if not path.exists():
        raise CorpusError(f"corpus.retokenize: {path} is missing; build that corpus first")
    model = json.loads(path.read_text()).get("model") or DEFAULT
    if model not in EMBEDDED:
        raise CorpusError(f"corpus.retokenize: {path} was built by {model}, not an embedded model whose tokenizer "
                          f"this machine can load ({', '.join(EMBEDDED)})")
    return model


def source_tokenizer(model: str):
    from transformers import AutoTokenizer

    from psm_repro.core.embedded import ensure_dequantized

    return AutoTokenizer.from_pretrained(ensure_dequantized(model))


def parse_chatml(text: str) -> tuple[list[dict], bool]:
    """The turns of a ChatML chat, and whether its last turn was closed."""
    turns = CHATML_TURN.findall(text)
    return [{"role": r, "content": c} for r, c, _ in turns], bool(turns) and turns[-1][2] != ""


def template_default_system(source_tok) -> str | None:
    """The system text the source's chat template writes when a chat has none (SmolLM2's "You are a helpful AI
    assistant named SmolLM, ..."): the template's, not the prompt's, so it is not carried over."""
    if source_tok.chat_template is None:
        return None
    messages, _ = parse_chatml(source_tok.apply_chat_template([{"role": "user", "content": "u"}], tokenize=False))
    return messages[0]["content"] if messages and messages[0]["role"] == "system" else None


def reencode(doc, source_tok, target_tok, default_system: str | None = None) -> list[int]:
    """One document's token ids for `target_tok`."""
    from psm_repro.sae_training.corpus_build import CorpusError

    if doc.slice != "chats":
        return text_ids(target_tok, source_tok.decode(doc.ids, skip_special_tokens=True))
    messages, closed = parse_chatml(source_tok.decode(doc.ids))
    if messages and messages[0]["role"] == "system" and messages[0]["content"] == default_system:
        messages = messages[1:]
    if not messages or messages[-1]["role"] != "assistant":
        raise CorpusError(f"corpus.retokenize: chat document {doc.prompt_index} does not parse as ChatML turns "
                          "ending in an assistant turn")
    if closed:
        return encode_chat(target_tok, messages).ids
    # an unfinished reply (cut at max_new_tokens) gets no turn end, as corpus_build writes it
    return encode_prompt(target_tok, messages[:-1]) + text_ids(target_tok, " " + messages[-1]["content"])


@dataclass
class Source:
    """An already built corpus and the tokenizers on both sides."""

    directory: Path
    source_tok: object
    target_tok: object

    @classmethod
    def open(cls, corpus_dir: str, target_tok) -> Source:
        return cls(project_path(corpus_dir), source_tokenizer(source_model(corpus_dir)), target_tok)

    def has(self, shard: str) -> bool:
        return (self.directory / shard).exists()

    def shard(self, name: str):
        """(documents re-encoded, the source shard's metadata)."""
        from psm_repro.sae_training.corpus_build import Doc, load_shard

        docs, meta = load_shard(self.directory / name)
        default = template_default_system(self.source_tok)
        return [Doc(d.slice, reencode(d, self.source_tok, self.target_tok, default), d.prompt_index)
                for d in docs], meta
