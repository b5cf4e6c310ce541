"""The A/B metric of CAA (Rimsky et al. 2024): p(answer matching behaviour) on held-out multiple-choice items.

For each item the question is the user turn; each answer is scored by teacher forcing as the start of the
assistant's reply, and p(matching) = P(matching) / (P(matching) + P(not matching)), the two answers'
sequence probabilities renormalised over the pair. For "(A)" / "(B)" answers this is exactly CAA's number:
both are scored as "(" then the letter, the "(" term is shared and cancels, and what is left is
P(A | "(") / (P(A | "(") + P(B | "(")).

Steering follows CAA too: the vector is added to the reply positions only (CAA adds it after the end of the
instruction), never to the question. So every condition shares the unsteered question: it is run once per
item, its KV cache is kept, and each (method, coefficient) costs one forward of the few answer tokens.
The system-prompt baseline runs the question with the trait's system turn instead.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import numpy as np
import torch

from psm_repro.core.chat import encode_prompt, text_ids
from psm_repro.core.hooked import HookedModel, position_ids
from psm_repro.core.steering import Intervention, steer
from psm_repro.peers.formats import LETTER, ABItem

logger = logging.getLogger(__name__)


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Token ids scored for one answer: "(" then the letter for "(A)"-style answers, else the text."""
    m = LETTER.match(answer)
    if m:
        return text_ids(tokenizer, "(") + text_ids(tokenizer, m.group(1))
    return text_ids(tokenizer, answer)


@torch.inference_mode()
def answer_logprobs(model: HookedModel, prompts: list[list[int]], answer_sets: list[list[list[int]]],
                    conditions: list[tuple[Intervention | None, float]], sae=None) -> np.ndarray:
    """(answer sets, conditions, items) summed log-prob of each item's answer after its prompt.

    The prompts run once (left-padded, KV cache kept); each condition and answer set then runs only the answer
    tokens, steered at those positions with the condition's intervention and coefficient (None: unsteered)."""
    ids, attn = model.pad_batch(prompts, side="left")
    dev = model.device
    out = model.model(input_ids=ids.to(dev), attention_mask=attn.to(dev),
                      position_ids=position_ids(attn).to(dev), use_cache=True, logits_to_keep=1)
    cache, width = out.past_key_values, ids.shape[1]
    pristine = copy.deepcopy(cache)  # for caches that cannot crop (Gemma-2's sliding-window layers)
    first_lp = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()
    pad = model.tokenizer.pad_token_id or 0
    result = np.zeros((len(answer_sets), len(conditions), len(prompts)))
    sets = []
    for a, answers in enumerate(answer_sets):
        length = max(map(len, answers))
        ans = torch.tensor([x + [pad] * (length - len(x)) for x in answers])
        mask = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in answers])
        # the first answer token is predicted at the last question position, before any steered position
        result[a] = first_lp.gather(1, ans[:, :1])[:, 0].numpy()[None]
        if length > 1:
            sets.append((a, ans[:, :-1], ans[:, 1:], mask))
    for c, (iv, coef) in enumerate(conditions):
        done: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (feed, mask, log-probs) already run
        for a, feed, target, mask in sets:
            # "(A" and "(B" feed the same "(": one forward serves both answers
            lp = next((l for f, m, l in done if torch.equal(f, feed) and torch.equal(m, mask)), None)
            if lp is None:
                cache = _rewind(cache, pristine, width)
                pos = attn.sum(1, keepdim=True) + torch.arange(feed.shape[1])[None]  # positions go on after it
                ctx = (steer(model, sae, [iv], torch.full((len(prompts),), float(coef)), positions="generated",
                             prompt_width=width) if iv is not None and coef != 0 else contextlib.nullcontext())
                seen = torch.cat([attn, mask[:, :-1]], 1)  # the question, then the fed answer tokens
                with ctx:
                    logits = model.model(input_ids=feed.to(dev), attention_mask=seen.to(dev), position_ids=pos.to(dev),
                                         past_key_values=cache, use_cache=True).logits
                lp = torch.log_softmax(logits.float().cpu(), -1)
                done.append((feed, mask, lp))
            result[a, c] += (lp.gather(-1, target[..., None])[..., 0] * mask[:, 1:]).sum(1).numpy()
    return result


def _rewind(cache, pristine, width: int):
    """The cache holding the question alone: cropped back where the cache can crop (a negative count means
    "remove n" in old and new transformers), else a fresh copy of the question's cache."""
    extra = cache.get_seq_length() - width
    if extra <= 0:
        return cache
    try:
        cache.crop(-extra)
        return cache
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        return copy.deepcopy(pristine)


def max_positions(model: HookedModel) -> int | None:
    """The longest sequence the model's position embeddings allow (None: no fixed limit known)."""
    cfg = model.model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def p_matching(model: HookedModel, sae, items: list[ABItem], conditions: list[tuple[str, Intervention | None, float]],
               system: str | None, batch_size: int = 16) -> np.ndarray:
    """(conditions, items) p(matching). `conditions`: (label, intervention or None, coefficient); the label
    "system_prompt" puts `system` before the question (unsteered). An item longer than the model's position limit
    gets NaN (left out of every mean) and a warning."""
    tok = model.tokenizer
    out = np.full((len(conditions), len(items)), np.nan)
    kinds = {"plain": [i for i, c in enumerate(conditions) if c[0] != "system_prompt"],
             "system": [i for i, c in enumerate(conditions) if c[0] == "system_prompt"]}
    heads = {"plain": [], "system": [{"role": "system", "content": system}]}
    prompts = {k: [encode_prompt(tok, heads[k] + [{"role": "user", "content": x.question}]) for x in items]
               for k, rows in kinds.items() if rows}
    answers = {side: [answer_ids(tok, getattr(x, side)) for x in items] for side in ("matching", "not_matching")}
    limit = max_positions(model)
    fits = [i for i in range(len(items)) if limit is None or all(
        len(p[i]) + max(len(a[i]) for a in answers.values()) <= limit for p in prompts.values())]
    if len(fits) < len(items):
        logger.warning("A/B metric: %d of %d items are longer than the model's %s positions; left out",
                       len(items) - len(fits), len(items), limit)
    for b in range(0, len(fits), batch_size):
        chunk = fits[b:b + batch_size]
        for kind, rows in kinds.items():
            if not rows:
                continue
            conds = [(conditions[i][1], conditions[i][2]) for i in rows]
            sets = [[answers[side][i] for i in chunk] for side in ("matching", "not_matching")]
            lp = answer_logprobs(model, [prompts[kind][i] for i in chunk], sets, conds, sae)
            out[np.ix_(rows, chunk)] = 1.0 / (1.0 + np.exp(lp[1] - lp[0]))
    return out


AB_COLUMNS = ["method", "coefficient", "p_matching", "ci_low", "ci_high", "diff_vs_unsteered", "diff_ci_low",
              "diff_ci_high", "n"]


def ab_table(model: HookedModel, sae, items: list[ABItem], ivs: dict[str, Intervention], steered: list[str],
             coefs: list[float], system: str, n_bootstrap: int, seed: int) -> list[dict]:
    """p(matching) for the unsteered model, the system prompt and every steered method x coefficient: mean over
    the held-out items with a BCa interval over items, and the paired difference from the unsteered model (per
    item, BCa interval)."""
    from psm_repro.core import stats

    conditions = [("unsteered", None, 0.0), ("system_prompt", None, 0.0)]
    conditions += [(m, ivs[m], c) for m in steered for c in coefs]
    p = p_matching(model, sae, items, conditions, system)
    rows = []
    for (method, _, c), values in zip(conditions, p):
        mean, lo, hi = stats.bca_interval(values, n_bootstrap, seed)
        d, dlo, dhi = stats.bca_interval(values - p[0], n_bootstrap, seed)
        rows.append({"method": method, "coefficient": c, "p_matching": mean, "ci_low": lo, "ci_high": hi,
                     "diff_vs_unsteered": d, "diff_ci_low": dlo, "diff_ci_high": dhi,
                     "n": int(np.isfinite(values).sum())})
    return rows
