"""The finder: which SAE latents fire both on narratives about a trait and when the assistant shows it.

Method, in order:
1. Encode every search item; read SAE latents at the SAE's hook over the measured tokens
   (all text tokens of a narrative, the content tokens of the final assistant turn of a chat).
2. Aggregate per item (max by default: a trait usually shows in a few tokens of an item, and a
   mean dilutes it with the item's length, which the matched neutral sets only roughly control).
3. Tested latents: active on enough of the pooled trait + neutral items of both sets (a rule blind to
   the labels within pairs, so the sign-flip null holds for them). Per tested latent and per set
   (narrative, assistant): paired effect size d_z over matched trait/neutral pairs and a one-sided
   sign-flip permutation p-value.
4. Shared score = min(narrative effect, assistant effect): high only when both fire.
   Joint p = max of the two p-values (intersection-union test), BH-FDR across tested latents.
   With `finder.rank_by=narrative_situation` the second contrast is the situation set read on the model's own
   processing (psm_repro/pipeline/situations.py) instead of the scripted replies; everything else is the same.
5. Controls: shuffled labels, single-set winners, a dense difference-of-means direction;
   stability across two halves of the pairs; the reuse rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from psm_repro.config import FinderConfig
from psm_repro.core import stats
from psm_repro.core.chat import Encoded, encode_chat, encode_text
from psm_repro.core.hooked import HookedModel
from psm_repro.core.loading import sae_encode, sae_first_position, sae_hook_name, sae_prepend_bos
from psm_repro.core.memory import rows_that_fit
from psm_repro.core.personas import Persona

logger = logging.getLogger(__name__)

SETS = ("narrative", "narrative_neutral", "assistant", "assistant_neutral")
REPLICATE_TOP = 50  # a latent "replicates" when it ranks in the top 50 on both halves of the pairs
FEATURE_COLUMNS = ["rank", "feature", "score", "narrative_effect", "assistant_effect", "narrative_p", "assistant_p",
                   "q_value", "significant", "replicates", "max_activation", "frequency", "top_tokens",
                   "top_snippets", "neuronpedia_url"]


@dataclass
class ItemActs:
    """Per-item SAE latent activations for one prompt set."""

    latents_NF: torch.Tensor
    argmax_NF: torch.Tensor
    resid_ND: torch.Tensor
    tokens: list[list[int]]


@dataclass
class FinderResult:
    rows: list[dict]
    summary: dict
    max_activation_F: torch.Tensor
    frequency_F: torch.Tensor
    dense_direction_D: torch.Tensor
    resid_norm: float
    extra: dict = field(default_factory=dict)


def encode_persona(model: HookedModel, persona: Persona, prepend_bos: bool,
                   first_position: int = 0) -> dict[str, list[Encoded]]:
    """The four search sets as token ids and measured-token masks; an item with no measured token (its max over
    nothing would be -inf, and every difference with it NaN) fails, naming the file and the item."""
    tok = model.tokenizer
    encoded = {
        "narrative": [encode_text(tok, t, prepend_bos, first_position) for t in persona.narrative],
        "narrative_neutral": [encode_text(tok, t, prepend_bos, first_position) for t in persona.narrative_neutral],
        "assistant": [encode_chat(tok, c) for c in persona.assistant],
        "assistant_neutral": [encode_chat(tok, c) for c in persona.assistant_neutral],
    }
    why = {"narrative": "the text encodes to special tokens only, or to none at or after the SAE's first trained "
                        f"position {first_position}",
           "assistant": "the final assistant turn's content has no token of its own"}
    for name, items in encoded.items():
        for i, e in enumerate(items):
            if not any(e.mask):
                where = persona.path or f"Persona {persona.name!r}"
                raise ValueError(f"{where}: search.{name}[{i}]: no measured tokens "
                                 f"({why[name.removesuffix('_neutral')]})")
    return encoded


def check_persona_tokens(model: HookedModel, sae, persona: Persona) -> None:
    """Every search item has tokens to measure with this tokenizer and SAE: tokenizing only, before any forward."""
    encode_persona(model, persona, sae_prepend_bos(sae), sae_first_position(sae))


def persona_activations(model: HookedModel, sae, persona: Persona, cfg: FinderConfig) -> dict[str, ItemActs]:
    """Item activations of the persona's four search sets (narrative and assistant, trait and neutral).

    An imported file without narratives is ranked on the assistant contrast alone: its narrative sets are the
    assistant sets (the same objects), so min(narrative d, assistant d) is the assistant d."""
    if not persona.assistant:
        raise ValueError(f"{persona.path}: no assistant contrast to search (search.assistant is empty)")
    encoded = encode_persona(model, persona, sae_prepend_bos(sae), sae_first_position(sae))
    sets = SETS if persona.narrative else ("assistant", "assistant_neutral")
    acts = {s: item_activations(model, sae, encoded[s], cfg.aggregation, cfg.batch_size,
                                desc=f"{persona.name}: {s}") for s in sets}
    if not persona.narrative:
        acts["narrative"], acts["narrative_neutral"] = acts["assistant"], acts["assistant_neutral"]
    return acts


def assistant_only(acts: dict[str, ItemActs]) -> bool:
    return acts["narrative"] is acts["assistant"]


@torch.no_grad()
def item_activations(model: HookedModel, sae, items: list[Encoded], aggregation: str, batch_size: int,
                     desc: str = "encoding") -> ItemActs:
    """Aggregate SAE latents over each item's measured tokens (batched, right-padded)."""
    hook = sae_hook_name(sae)
    lat, arg, res = [], [], []
    batch_size = rows_that_fit(model, max(len(e.ids) for e in items), batch_size, logits=False)
    for start in tqdm(range(0, len(items), batch_size), desc=desc, leave=False):
        batch = items[start:start + batch_size]
        ids, attn = model.pad_batch([e.ids for e in batch])
        mask_BT = torch.zeros_like(attn, dtype=torch.bool)
        for i, e in enumerate(batch):
            mask_BT[i, : len(e.mask)] = torch.tensor(e.mask)
        acts_BTD = model.activations(ids, attn, hook).float()
        feats_BTF = sae_encode(sae, acts_BTD).float()
        # reduce over tokens where the activations are (GPU): only (B, F) results travel to the CPU
        m = mask_BT.to(feats_BTF.device)[..., None]
        n_B1 = m.sum(1).clamp(min=1)
        mx, am = feats_BTF.masked_fill(~m, float("-inf")).max(1)
        agg = mx if aggregation == "max" else (feats_BTF * m).sum(1) / n_B1
        lat.append(agg.cpu())
        arg.append(am.cpu())
        res.append(((acts_BTD * m).sum(1) / n_B1).cpu())
    return ItemActs(torch.cat(lat), torch.cat(arg), torch.cat(res), [e.ids for e in items])


def _set_stats(trait: torch.Tensor, neutral: torch.Tensor, cfg: FinderConfig, gen: torch.Generator,
               tested: torch.Tensor):
    diff = trait - neutral
    p = torch.ones(diff.shape[1])
    # permutations only for tested latents: the rest never reach the FDR step
    p[tested] = stats.sign_flip_pvalues(diff[:, tested], cfg.n_permutations, gen)
    return stats.paired_effect(diff), p, diff


def tested_latents(acts: dict[str, ItemActs], min_active_items: int, second: str = "assistant") -> torch.Tensor:
    """(F,) bool: latents active (> 0) on at least `min_active_items` of the pooled trait + neutral items,
    in the narrative set and in the `second` set (assistant: the scripted chats).

    The rule sees only how many items of each pair are active, never which of them is the trait item,
    so swapping labels within pairs leaves the tested set unchanged: the sign-flip null is the null of
    the selected latents too. (Selecting on trait items alone favours latents that happened to fire
    more on trait items, which made the sign-flip p-values and the shuffled chance scores optimistic.)
    """
    keep = None
    for s in ("narrative", second):
        n_active = (acts[s].latents_NF > 0).sum(0) + (acts[f"{s}_neutral"].latents_NF > 0).sum(0)
        ok = n_active >= min_active_items
        keep = ok if keep is None else keep & ok
    return keep


def rank_latents(acts: dict[str, ItemActs], cfg: FinderConfig, seed: int, second: str = "assistant") -> dict:
    """Effects, p-values, shared score min(narrative, `second`) and q-values for every latent (tested latents:
    `tested_latents`); `second` names the other contrast (assistant, or situation_prompt / situation_reply)."""
    gen = torch.Generator().manual_seed(seed)
    active = tested_latents(acts, cfg.min_active_items, second)
    n_eff, n_p, n_diff = _set_stats(acts["narrative"].latents_NF, acts["narrative_neutral"].latents_NF,
                                    cfg, gen, active)
    s_eff, s_p, s_diff = _set_stats(acts[second].latents_NF, acts[f"{second}_neutral"].latents_NF,
                                    cfg, gen, active)
    score = torch.minimum(n_eff, s_eff)
    score = torch.where(active, score, torch.full_like(score, float("-inf")))
    joint_p = torch.maximum(n_p, s_p)
    q = np.ones(len(score))
    tested = active.numpy()
    q[tested] = stats.benjamini_hochberg(joint_p.numpy()[tested])
    return {"narrative_effect": n_eff, "second_effect": s_eff, "narrative_p": n_p, "second_p": s_p,
            "score": score, "q": q, "active": active, "n_diff": n_diff, "s_diff": s_diff}


def _dense_baseline(acts: dict[str, ItemActs], seed: int) -> dict:
    """Difference-of-means residual direction (trait - neutral), cross-validated over halves of the pairs."""
    rng = np.random.default_rng(seed)
    out = {}
    dirs = {}
    for s in ("narrative", "assistant"):
        t, n = acts[s].resid_ND, acts[f"{s}_neutral"].resid_ND
        dirs[s] = (t - n).mean(0)
        perm = rng.permutation(len(t))
        a, b = perm[: len(t) // 2], perm[len(t) // 2:]
        d_a = (t[a] - n[a]).mean(0)
        d_a = d_a / d_a.norm()
        proj = ((t[b] - n[b]) @ d_a)[:, None]
        out[f"{s}_heldout_effect"] = float(stats.paired_effect(proj)[0])
    cos = torch.nn.functional.cosine_similarity(dirs["narrative"], dirs["assistant"], dim=0)
    out["cosine_narrative_vs_assistant"] = float(cos)
    # transfer: does the narrative direction separate assistant pairs (and vice versa)?
    for src, dst in (("narrative", "assistant"), ("assistant", "narrative")):
        d = dirs[src] / dirs[src].norm()
        proj = ((acts[dst].resid_ND - acts[f"{dst}_neutral"].resid_ND) @ d)[:, None]
        out[f"{src}_direction_on_{dst}_effect"] = float(stats.paired_effect(proj)[0])
    shared = dirs["narrative"] / dirs["narrative"].norm() + dirs["assistant"] / dirs["assistant"].norm()
    out["direction"] = shared / shared.norm()
    return out


def _snippets(acts: dict[str, ItemActs], feature: int, tokenizer, n: int) -> tuple[str, str]:
    cands = []
    for s in SETS:
        if s.startswith("narrative") and assistant_only(acts):
            continue
        a = acts[s]
        for i in range(a.latents_NF.shape[0]):
            cands.append((float(a.latents_NF[i, feature]), s, i))
    cands.sort(reverse=True)
    tokens, snippets = [], []
    for value, s, i in cands[:n]:
        if value <= 0:
            break
        pos = int(acts[s].argmax_NF[i, feature])
        ids = acts[s].tokens[i]
        tokens.append(tokenizer.decode([ids[pos]]).strip() or repr(tokenizer.decode([ids[pos]])))
        left = tokenizer.decode(ids[max(0, pos - 10):pos], skip_special_tokens=True)
        right = tokenizer.decode(ids[pos + 1:pos + 4], skip_special_tokens=True)
        snippets.append(f"[{s}] ...{left}[[{tokenizer.decode([ids[pos]])}]]{right}... ({value:.2f})".replace("\n", " "))
    return " | ".join(tokens), " || ".join(snippets)


def find_features(model: HookedModel, sae, persona: Persona, cfg: FinderConfig, seed: int,
                  neuronpedia_id: str | None = None, situation: dict[str, ItemActs] | None = None) -> FinderResult:
    """Rank latents for one persona and compute every control the summary reports.

    `situation`: the persona's situation sets read by `situations.read_situations`; needed for
    `cfg.rank_by=narrative_situation`, which ranks on min(narrative d, situation d at `cfg.situation_read`)."""
    acts = persona_activations(model, sae, persona, cfg)
    # the scripted contrast is always computed: the reuse rate and the streetlight test are about it
    scripted = rank_latents(acts, cfg, seed)
    second = "assistant"
    if cfg.rank_by == "narrative_situation":
        if not situation:
            raise ValueError(f"finder.rank_by=narrative_situation: {persona.path} has no search.situation set")
        second = f"situation_{cfg.situation_read}"
        acts.update(situation)
    full = scripted if second == "assistant" else rank_latents(acts, cfg, seed, second)
    order = torch.argsort(full["score"], descending=True)
    n_tested = int(full["active"].sum())
    all_lat = torch.cat([acts[s].latents_NF for s in SETS[2 if assistant_only(acts) else 0:]])
    max_act = all_lat.max(0).values
    freq = (all_lat > 0).float().mean(0)

    half_ranks, top10_overlap = _stability(acts, cfg, seed, second)
    gen = torch.Generator().manual_seed(seed + 99)
    # 200 draws: with 20, the "p95" is the runner-up of 20 and a chance top score beats it ~10% of the time
    null_max = _shuffled_max_scores(full, gen, draws=200)
    reuse, reuse_null, sig_a_F, sig_n_F = _reuse_rate(scripted, cfg, gen)
    alone = assistant_only(acts)
    if alone:  # no narratives: nothing can be "reused"
        reuse = reuse_null = float("nan")
    dense = _dense_baseline(acts, seed)
    rows = []
    for rank, f in enumerate(order[: cfg.top_n].tolist(), start=1):
        if not full["active"][f]:
            break
        top_tokens, top_snips = _snippets(acts, f, model.tokenizer, cfg.n_snippets)
        rows.append({
            "rank": rank, "feature": f, "score": float(full["score"][f]),
            "narrative_effect": float(full["narrative_effect"][f]),
            "assistant_effect": float(scripted["second_effect"][f]),
            "narrative_p": float(full["narrative_p"][f]), "assistant_p": float(scripted["second_p"][f]),
            "q_value": float(full["q"][f]), "significant": bool(full["q"][f] < cfg.fdr_alpha),
            "replicates": bool(half_ranks[0][f] < REPLICATE_TOP and half_ranks[1][f] < REPLICATE_TOP),
            "max_activation": float(max_act[f]), "frequency": float(freq[f]),
            "top_tokens": top_tokens, "top_snippets": top_snips,
            "neuronpedia_url": f"https://www.neuronpedia.org/{neuronpedia_id}/{f}" if neuronpedia_id else "",
        })
    best_n = int(torch.argmax(torch.where(scripted["active"], scripted["narrative_effect"], torch.tensor(-1e9))))
    best_a = int(torch.argmax(torch.where(scripted["active"], scripted["second_effect"], torch.tensor(-1e9))))
    resid_norm = float(torch.cat([acts[s].resid_ND for s in SETS[2 if alone else 0:]]).norm(dim=-1).mean())
    summary = {
        "persona": persona.name, "aggregation": cfg.aggregation, "latents": int(len(full["score"])),
        "latents_tested": n_tested, "significant_shared": int(sum(r["significant"] for r in rows)),
        "top_feature": rows[0]["feature"] if rows else None, "top_score": rows[0]["score"] if rows else None,
        "shuffled_max_score_mean": float(np.nanmean(null_max)) if null_max else None,
        "shuffled_max_score_p95": float(np.nanquantile(null_max, 0.95)) if null_max else None,
        "best_narrative_only": {"feature": best_n, "narrative_effect": float(scripted["narrative_effect"][best_n]),
                                "assistant_effect": float(scripted["second_effect"][best_n])},
        "best_assistant_only": {"feature": best_a, "narrative_effect": float(scripted["narrative_effect"][best_a]),
                                "assistant_effect": float(scripted["second_effect"][best_a])},
        "rank_by": cfg.rank_by, "ranked_on": second,
        "dense_baseline": {k: v for k, v in dense.items() if k != "direction"},
        "stability_top10_overlap": top10_overlap,
        "replicating_in_top10": sum(r["replicates"] for r in rows[:10]),
        "reuse_rate": reuse, "reuse_rate_shuffled": reuse_null,
        "assistant_significant": int(sig_a_F.sum()), "narrative_significant": int(sig_n_F.sum()),
        "n_pairs": {"narrative": len(persona.narrative), "assistant": len(persona.assistant)},
        "assistant_only": alone,
    }
    extra = {"set_latents": {s: acts[s].latents_NF for s in SETS}, "narrative_effect": scripted["narrative_effect"],
             "significant_assistant": sig_a_F, "significant_narrative": sig_n_F}
    return FinderResult(rows, summary, max_act, freq, dense["direction"], resid_norm, extra)


def _stability(acts: dict[str, ItemActs], cfg: FinderConfig, seed: int,
               second: str = "assistant") -> tuple[list[torch.Tensor], int]:
    """Rank latents separately on two random halves of the pairs; (rank of each latent per half, top-10 overlap)."""
    rng = np.random.default_rng(seed)
    perms = {k: rng.permutation(acts[k].latents_NF.shape[0]) for k in ("narrative", second)}
    if acts["narrative"] is acts[second]:  # assistant contrast alone: the same halves on both sides
        perms["narrative"] = perms[second]
    ranks, tops = [], []
    for h in range(2):
        sub = {s: _subset(acts[s], perms[s.removesuffix("_neutral")][h::2])
               for s in ("narrative", "narrative_neutral", second, f"{second}_neutral")}
        score = rank_latents(sub, cfg, seed + 1 + h, second)["score"]
        order = torch.argsort(score, descending=True)
        r = torch.empty_like(order)
        r[order] = torch.arange(len(order))
        ranks.append(r)
        tops.append(set(order[:10].tolist()))
    return ranks, len(tops[0] & tops[1])


def _shuffled_max_scores(full: dict, gen: torch.Generator, draws: int) -> list[float]:
    """The best shared score over tested latents when each pair's labels are swapped at random.

    The tested set is reused as is: `tested_latents` is blind to labels within pairs, so it is also the set
    the shuffled data would have selected."""
    out = []
    same = torch.equal(full["n_diff"], full["s_diff"])  # assistant contrast alone: one shuffle, not two
    for _ in range(draws):
        n = stats.paired_effect(stats.random_sign_flip(full["n_diff"], gen))
        s = n if same else torch.minimum(n, stats.paired_effect(stats.random_sign_flip(full["s_diff"], gen)))
        out.append(float(s[full["active"]].max()) if full["active"].any() else float("nan"))
    return out


def _reuse_rate(full: dict, cfg: FinderConfig, gen: torch.Generator
                ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Of latents significant on assistant chats, the fraction also significant on narratives, the same
    fraction with the narrative labels shuffled (what chance alone gives), and the two (F,) significance masks."""
    tested = full["active"]

    def significant(p: torch.Tensor) -> np.ndarray:
        q = np.ones(len(tested))
        q[tested.numpy()] = stats.benjamini_hochberg(p.numpy()[tested.numpy()])
        return (q < cfg.fdr_alpha) & tested.numpy()

    sig_a, sig_n = significant(full["second_p"]), significant(full["narrative_p"])
    shuffled_p = torch.ones(len(tested))
    shuffled_p[tested] = stats.sign_flip_pvalues(stats.random_sign_flip(full["n_diff"], gen)[:, tested],
                                                 cfg.n_permutations, gen)
    sig_shuffled = significant(shuffled_p)
    n_a = int(sig_a.sum())
    if not n_a:
        return float("nan"), float("nan"), sig_a, sig_n
    return float((sig_a & sig_n).sum() / n_a), float((sig_a & sig_shuffled).sum() / n_a), sig_a, sig_n


def _subset(a: ItemActs, idx: np.ndarray) -> ItemActs:
    idx_t = torch.as_tensor(idx)
    return ItemActs(a.latents_NF[idx_t], a.argmax_NF[idx_t], a.resid_ND[idx_t], [a.tokens[i] for i in idx])
