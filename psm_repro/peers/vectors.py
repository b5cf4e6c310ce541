"""The peers' steering vectors, built at the SAE's hook so they steer through the same path as the latent.

* persona vector (Chen et al. 2025, persona_vectors): for every (instruction pair, question), sample a reply
  under the `pos` system prompt and one under the `neg` system prompt; keep the pairs whose pos reply the judge
  rates trait-high and whose neg reply it rates trait-low, both coherent; the vector is the mean residual over
  the reply tokens of the kept pos replies minus that of the kept neg replies (their `response_avg_diff`).
* CAA vector (Rimsky et al. 2024): the mean residual at the answer-letter token of each A/B question answered
  with the matching letter, minus the same with the non-matching letter.

Both come back as unit directions; the sweep adds them at the latent's vector norm (matched norms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from psm_repro.config import PeersConfig
from psm_repro.core.chat import Encoded, encode_chat, encode_prompt
from psm_repro.core.finder import item_activations
from psm_repro.core.sampling import Sampling, cached_replies
from psm_repro.peers.formats import ABItem, Peers

logger = logging.getLogger(__name__)
EXTRACTION_SEED_OFFSET = 104729
"""Extraction replies are sampled with seed + this, so they never share a random stream with the sweep."""


@dataclass
class PeerVector:
    """A unit steering direction at the SAE's hook, or None with the reason it was not built."""

    name: str
    direction: torch.Tensor | None
    info: dict = field(default_factory=dict)


@dataclass
class Extraction:
    """The persona-vector extraction replies: row i of `pos` and of `neg` answer the same question under
    instruction pair `pair[i]`."""

    questions: list[str]
    pair: list[int]
    pos: list[str]
    neg: list[str]


def sample_extraction(model, peers: Peers, cfg: PeersConfig, seed: int, cache_dir: Path) -> Extraction:
    """One reply per (instruction pair, question, sample) and side, unsteered, cached (psm_repro/core/sampling.py)."""
    tok = model.tokenizer
    combos = [(k, q) for k in range(len(peers.instruction)) for q in peers.questions]
    sampling = Sampling(cfg.samples, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    texts = {}
    for side, idx in (("pos", 0), ("neg", 1)):
        prompts = [encode_prompt(tok, [{"role": "system", "content": peers.instruction[k][idx]},
                                       {"role": "user", "content": q}]) for k, q in combos]
        replies, cached = cached_replies(model, prompts, sampling, seed + EXTRACTION_SEED_OFFSET, cache_dir)
        logger.info("persona vector: %d %s replies (%s)", len(replies), side, "cached" if cached else "sampled")
        texts[side] = [tok.decode(r, skip_special_tokens=True).strip() for r in replies]
    rows = [c for c in combos for _ in range(cfg.samples)]
    return Extraction([q for _, q in rows], [k for k, _ in rows], texts["pos"], texts["neg"])


def kept_pairs(pos_trait: np.ndarray, neg_trait: np.ndarray, pos_coherence: np.ndarray, neg_coherence: np.ndarray,
               cfg: PeersConfig) -> np.ndarray:
    """persona_vectors' filter: pos trait >= t, neg trait < 1 - t, both coherence >= c (scores in [0, 1])."""
    return ((pos_trait >= cfg.trait_threshold) & (neg_trait < 1 - cfg.trait_threshold)
            & (pos_coherence >= cfg.coherence_threshold) & (neg_coherence >= cfg.coherence_threshold))


def _reply_chats(ex: Extraction, peers: Peers, side: int, keep: np.ndarray) -> list[list[dict]]:
    replies = ex.pos if side == 0 else ex.neg
    return [[{"role": "system", "content": peers.instruction[ex.pair[i]][side]},
             {"role": "user", "content": ex.questions[i]},
             {"role": "assistant", "content": replies[i]}] for i in np.where(keep)[0]]


def _mean_resid(model, sae, items: list[Encoded], batch_size: int, desc: str) -> torch.Tensor:
    """Mean over items of each item's mean residual over its measured tokens, at the SAE's hook."""
    return item_activations(model, sae, items, "mean", batch_size, desc=desc).resid_ND.mean(0)


def persona_vector(model, sae, ex: Extraction, peers: Peers, scores: dict, cfg: PeersConfig,
                   batch_size: int = 16) -> PeerVector:
    """The response-average difference over the pairs the judge kept. `scores`: trait and coherence arrays
    for the pos and the neg replies (keys pos_trait, neg_trait, pos_coherence, neg_coherence)."""
    keep = kept_pairs(scores["pos_trait"], scores["neg_trait"], scores["pos_coherence"], scores["neg_coherence"], cfg)
    # a reply with no tokens has nothing to average over
    keep &= np.array([bool(a.strip()) and bool(b.strip()) for a, b in zip(ex.pos, ex.neg)])
    info = {"pairs": len(ex.pos), "kept": int(keep.sum()), "trait_threshold": cfg.trait_threshold,
            "coherence_threshold": cfg.coherence_threshold,
            "pos_trait_mean": float(np.mean(scores["pos_trait"])),
            "neg_trait_mean": float(np.mean(scores["neg_trait"]))}
    if keep.sum() < cfg.min_pairs:
        info["why_not"] = (f"{int(keep.sum())} of {len(ex.pos)} pairs passed the judge filter "
                           f"(peers.min_pairs={cfg.min_pairs})")
        return PeerVector("persona_vector", None, info)
    tok = model.tokenizer
    pos = [encode_chat(tok, c) for c in _reply_chats(ex, peers, 0, keep)]
    neg = [encode_chat(tok, c) for c in _reply_chats(ex, peers, 1, keep)]
    diff = (_mean_resid(model, sae, pos, batch_size, "persona vector: pos")
            - _mean_resid(model, sae, neg, batch_size, "persona vector: neg"))
    info["raw_norm"] = float(diff.norm())
    return PeerVector("persona_vector", diff / diff.norm(), info)


def answer_token_item(tokenizer, question: str, answer: str) -> Encoded:
    """The question answered with `answer`, measured at the answer's last token (the letter of "(A")."""
    enc = encode_chat(tokenizer, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    last = max(i for i, m in enumerate(enc.mask) if m)
    return Encoded(enc.ids, [i == last for i in range(len(enc.mask))])


def caa_vector(model, sae, items: list[ABItem], batch_size: int = 16) -> PeerVector:
    """Mean residual at the matching answer's letter minus at the non-matching one's, over the A/B items."""
    if not items:
        return PeerVector("caa_vector", None, {"why_not": "no A/B items to build it from (peers.ab_train)"})
    tok = model.tokenizer
    match = [answer_token_item(tok, x.question, x.answers()[0]) for x in items]
    other = [answer_token_item(tok, x.question, x.answers()[1]) for x in items]
    diff = (_mean_resid(model, sae, match, batch_size, "CAA: matching")
            - _mean_resid(model, sae, other, batch_size, "CAA: not matching"))
    return PeerVector("caa_vector", diff / diff.norm(), {"items": len(items), "raw_norm": float(diff.norm())})
