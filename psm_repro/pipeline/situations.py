"""Situation sets: the assistant put in a situation, read on the model's own processing (issue 19).

A persona's `search.situation` items are user turns (optional system turns) that put the assistant in the
situation; `search.situation_neutral[i]` is the same chat with the situation swapped out. Nothing is written
in the assistant's voice. Each item is read at two places:

- **prompt**: every prompt token the model reads before it writes (the chat template's markup and special
  tokens excepted, and positions before the SAE's first training position);
- **reply**: the model's own sampled replies (`finder.situation_samples` per prompt, seed recorded), the
  per-sample max over reply tokens averaged over samples, so each pair keeps one value.

Replies are sampled once per (model, prompts, sampling settings, seed) and cached by that content hash.
The contrast per read point is the finder's: paired d_z over matched pairs, one-sided sign-flip p-values for
latents active on enough pooled items, BH-FDR, and a shuffled-label null for the best effect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps

from psm_repro.config import FinderConfig
from psm_repro.core import stats
from psm_repro.core.chat import Encoded, content_spans, encode_prompt, fold_system, is_transcript, supports_system
from psm_repro.core.finder import ItemActs, item_activations
from psm_repro.core.personas import Persona
from psm_repro.core.sampling import Sampling, cached_replies

logger = logging.getLogger(__name__)

READS = ("prompt", "reply")
GENERATION_BATCH = 32


@dataclass
class Contrast:
    """One read point's paired contrast over the situation pairs, for every latent."""

    effect_F: torch.Tensor
    p_F: torch.Tensor
    q_F: np.ndarray
    tested_F: torch.Tensor
    diff_NF: torch.Tensor
    shuffled_p95: float


@dataclass
class SituationRead:
    acts: dict[str, ItemActs]
    """situation_prompt, situation_prompt_neutral, situation_reply, situation_reply_neutral."""
    replies: list[dict]
    """One record per sampled reply: set, item, sample, text (written to situation_replies.jsonl)."""
    seed: int
    cached: bool


def prompt_item(tokenizer, chat: list[dict], first_position: int) -> Encoded:
    """The generation prompt, measured on the item's own text and the generation header the template appends:
    not special tokens, not positions before `first_position`, and not text the template adds by itself
    (SmolLM2's default system prompt, identical on both sides of a pair, would set the max of every latent
    that fires on "helpful AI assistant" and hide the situation)."""
    ids = encode_prompt(tokenizer, chat)
    special = set(tokenizer.all_special_ids)
    own = _own_tokens(tokenizer, chat, ids) or [True] * len(ids)
    return Encoded(ids, [i >= first_position and t not in special and o for i, (t, o) in enumerate(zip(ids, own))])


def _own_tokens(tokenizer, chat: list[dict], ids: list[int]) -> list[bool] | None:
    """Per token of the rendered prompt: does it start inside a message's content or the generation header?
    None where the template's text cannot be matched to `ids` (then every token counts)."""
    if is_transcript(tokenizer):  # the transcript adds no text of its own
        return None
    messages = chat if supports_system(tokenizer) else fold_system(chat)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bare = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != ids or not text.startswith(bare):
        return None
    spans = [(len(bare), len(text))] + content_spans(text, [m["content"] for m in messages])
    return [any(lo <= a < hi for lo, hi in spans) for a, _ in enc["offset_mapping"]]


def reply_item(prompt_ids: list[int], reply_ids: list[int]) -> Encoded:
    """Prompt plus the model's reply, measured on the reply's tokens only."""
    return Encoded(prompt_ids + reply_ids, [False] * len(prompt_ids) + [True] * len(reply_ids))


def sample_replies(model, prompts: list[list[int]], cfg: FinderConfig, seed: int,
                   cache_dir: Path) -> tuple[list[list[int]], bool]:
    """`cfg.situation_samples` replies per prompt, cached (psm_repro/core/sampling.py)."""
    sampling = Sampling(cfg.situation_samples, cfg.situation_max_new_tokens, cfg.situation_temperature,
                        cfg.situation_top_p)
    return cached_replies(model, prompts, sampling, seed, cache_dir)


def _mean_over_samples(a: ItemActs, samples: int) -> ItemActs:
    """Average per-sample item values into one value per prompt (a reply with no tokens counts as 0)."""
    lat = torch.nan_to_num(a.latents_NF, neginf=0.0)
    n = lat.shape[0] // samples
    return ItemActs(lat.reshape(n, samples, -1).mean(1), a.argmax_NF[::samples],
                    a.resid_ND.reshape(n, samples, -1).mean(1), a.tokens[::samples])


def read_situations(model, sae, persona: Persona, cfg: FinderConfig, seed: int, first_position: int,
                    cache_dir: Path) -> SituationRead:
    """SAE latents on the situation prompts and on the model's own replies to them."""
    tok = model.tokenizer
    sets = {"situation": persona.situation, "situation_neutral": persona.situation_neutral}
    prompts = {k: [prompt_item(tok, c, first_position) for c in chats] for k, chats in sets.items()}
    acts = {}
    for k, items in prompts.items():
        acts[k.replace("situation", "situation_prompt")] = item_activations(
            model, sae, items, cfg.aggregation, cfg.batch_size, desc=f"encoding {k} prompts")
    all_prompts = [e.ids for k in sets for e in prompts[k]]
    reply_seed = seed + 7919  # its own stream, apart from the finder's permutations and the steering sweep
    replies, cached = sample_replies(model, all_prompts, cfg, reply_seed, cache_dir)
    s = cfg.situation_samples
    records = []
    for n_set, k in enumerate(sets):
        offset = n_set * len(prompts["situation"]) * s
        items = []
        for i, e in enumerate(prompts[k]):
            for j in range(s):
                reply = replies[offset + i * s + j]
                items.append(reply_item(e.ids, reply))
                records.append({"set": k, "item": i, "sample": j, "reply": tok.decode(reply, skip_special_tokens=True)})
        raw = item_activations(model, sae, items, cfg.aggregation, cfg.batch_size, desc=f"encoding {k} replies")
        acts[k.replace("situation", "situation_reply")] = _mean_over_samples(raw, s)
    return SituationRead(acts, records, reply_seed, cached)


def contrast(trait: ItemActs, neutral: ItemActs, cfg: FinderConfig, seed: int) -> Contrast:
    """Paired effect, sign-flip p and BH q per latent; tested: active on >= min_active_items pooled items."""
    gen = torch.Generator().manual_seed(seed)
    diff = trait.latents_NF - neutral.latents_NF
    tested = ((trait.latents_NF > 0).sum(0) + (neutral.latents_NF > 0).sum(0)) >= cfg.min_active_items
    p = torch.ones(diff.shape[1])
    q = np.ones(diff.shape[1])
    if tested.any():
        p[tested] = stats.sign_flip_pvalues(diff[:, tested], cfg.n_permutations, gen)
        q[tested.numpy()] = stats.benjamini_hochberg(p.numpy()[tested.numpy()])
    null = [float(stats.paired_effect(stats.random_sign_flip(diff[:, tested], gen)).max())
            for _ in range(200)] if tested.any() else [float("nan")]
    return Contrast(stats.paired_effect(diff), p, q, tested, diff, float(np.nanquantile(null, 0.95)))


def effect_interval(diff_N: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    """95% BCa bootstrap interval (scipy) of the paired effect size d_z over pairs, with the SD floor of
    `stats.paired_effect` (so the interval is for the same number the card reports)."""
    diff_N = np.asarray(diff_N, dtype=float)
    if len(diff_N) < 3 or np.all(diff_N == diff_N[0]):
        return float("nan"), float("nan")

    def d_z(x, axis=-1):
        floor = 1e-3 + 0.05 * np.abs(x).max(axis)
        return x.mean(axis) / np.maximum(x.std(axis, ddof=1), floor)

    ci = sps.bootstrap((diff_N,), d_z, n_resamples=n_resamples, vectorized=True, method="BCa",
                       rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def latent_rows(contrasts: dict[str, Contrast], features: list[tuple[int, str]], scripted: dict[int, bool],
                cfg: FinderConfig, n_resamples: int, seed: int) -> list[dict]:
    """The card's table: each (latent, group) with its situation effect at both read points and whether the
    scripted-reply contrast and the situation contrast agree."""
    rows = []
    for f, group in features:
        row = {"feature": f, "group": group, "scripted_significant": scripted[f]}
        passed = False
        for read in READS:
            c = contrasts[read]
            lo, hi = effect_interval(c.diff_NF[:, f].numpy(), n_resamples, seed)
            # plain bools: numpy's would reach summary.json as the strings "True" / "False"
            sig = bool(c.tested_F[f]) and bool(c.q_F[f] < cfg.fdr_alpha) and float(c.effect_F[f]) > 0
            row.update({f"{read}_d": float(c.effect_F[f]), f"{read}_ci_low": lo, f"{read}_ci_high": hi,
                        f"{read}_q": float(c.q_F[f]), f"{read}_significant": sig,
                        f"{read}_beats_shuffled": float(c.effect_F[f]) > c.shuffled_p95})
            passed |= sig
        row["situation_significant"] = passed
        row["agree"] = passed == scripted[f]
        rows.append(row)
    return rows


def summarise(read: SituationRead, contrasts: dict[str, Contrast], rows: list[dict], cfg: FinderConfig) -> dict:
    """The summary's `situation` section."""
    n = read.acts["situation_prompt"].latents_NF.shape[0]
    return {
        "n_pairs": n, "samples": cfg.situation_samples, "reply_seed": read.seed, "replies_cached": read.cached,
        "max_new_tokens": cfg.situation_max_new_tokens, "temperature": cfg.situation_temperature,
        "top_p": cfg.situation_top_p, "rank_by": cfg.rank_by, "situation_read": cfg.situation_read,
        "reads": {r: {"tested": int(c.tested_F.sum()), "shuffled_p95": c.shuffled_p95,
                      "significant": int(((c.q_F < cfg.fdr_alpha) & c.tested_F.numpy()
                                          & (c.effect_F.numpy() > 0)).sum())}
                  for r, c in contrasts.items()},
        "latents": rows,
        "disagree": [r["feature"] for r in rows if not r["agree"]],
    }


SITUATION_COLUMNS = ["situation_prompt_d", "situation_prompt_q", "situation_reply_d", "situation_reply_q",
                     "generic", "other_personas_passed"]


def section(read: SituationRead, found, cfg: FinderConfig, seed: int, n_resamples: int) -> dict:
    """Both read points' contrasts, the features.csv columns for every row, and the card's `situation` section:
    the top 10 shared latents and the 3 best narrative-only latents (significant on narratives, not on the
    scripted replies)."""
    contrasts = {r: contrast(read.acts[f"situation_{r}"], read.acts[f"situation_{r}_neutral"], cfg, seed + 31 + i)
                 for i, r in enumerate(READS)}
    for row in found.rows:
        for r, c in contrasts.items():
            row[f"situation_{r}_d"] = float(c.effect_F[row["feature"]])
            row[f"situation_{r}_q"] = float(c.q_F[row["feature"]])
    sig_a = found.extra["significant_assistant"]
    sig_n = found.extra["significant_narrative"]
    narr = found.extra["narrative_effect"].numpy()
    only = [int(f) for f in np.argsort(-narr) if sig_n[f] and not sig_a[f]][:3]
    picks = [(r["feature"], f"shared #{r['rank']}") for r in found.rows[:10]]
    picks += [(f, "narrative-only") for f in only if f not in {p[0] for p in picks}]
    rows = latent_rows(contrasts, picks, {f: bool(sig_a[f]) for f, _ in picks}, cfg, n_resamples, seed)
    return summarise(read, contrasts, rows, cfg)
