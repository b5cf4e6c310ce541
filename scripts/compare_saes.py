"""How the finder changes between two SAEs of the same model and layer, persona by persona.

For each shipped persona and each SAE: the top shared latent, its top tokens on the persona's own texts, its
lexicality, the finder's stability across halves (top-10 overlap), its reuse rate (with the shuffled-label
control), and how many of the top 10 are significant. Lexicality is measured on the committed corpus's held-out
documents (every slice, tokens the SAEs never trained on; the same tokens for both SAEs): the share of a latent's
100 largest activations taken by its single most common token. 1.0 means a one-token detector.

    python scripts/compare_saes.py smollm2_135m_l15_topk_v1 smollm2_135m_l15_topk_v2 > docs/sae_comparison.md
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import torch

from psm_repro.api import run_config
from psm_repro.core.finder import find_features
from psm_repro.core.loading import load_model, load_sae, sae_encode, sae_hook_name
from psm_repro.core.paths import project_path
from psm_repro.core.personas import PERSONA_DIR, load_persona
from psm_repro.sae_training.data import heldout_sequences, load_corpus
from psm_repro.sae_training.evaluate import FIRST_POSITION

TOP_ACTS = 100
LEXICAL = 0.5
"""A latent counts as single-token when one token takes more than half of its top-100 activations."""


@torch.inference_mode()
def top_activation_tokens(model, saes: dict, cfg) -> tuple[dict[str, torch.Tensor], int]:
    """{sae: token ids (TOP_ACTS, d_sae) at each latent's largest activations} over the committed corpus's held-out
    sequences (positions >= 2), and the number of tokens read; a latent that fires on fewer tokens gets -1s."""
    corpus = load_corpus(project_path(cfg.train_sae.corpus))
    seqs = [s for v in heldout_sequences(corpus, cfg.train_sae, model.tokenizer.bos_token_id, cfg.seed).values()
            for s in v]
    hook = sae_hook_name(next(iter(saes.values())))
    best = {k: (torch.zeros(0, sae.cfg.d_sae), torch.zeros(0, sae.cfg.d_sae, dtype=torch.long))
            for k, sae in saes.items()}
    n = 0
    for i in range(0, len(seqs), 16):
        ids = torch.tensor(seqs[i:i + 16])
        acts = model.activations(ids, torch.ones_like(ids), hook)[:, FIRST_POSITION:]
        tok = ids[:, FIRST_POSITION:].reshape(-1)
        n += len(tok)
        for k, sae in saes.items():
            lat = sae_encode(sae, acts).reshape(-1, sae.cfg.d_sae).float()
            vals = torch.cat([best[k][0], lat])
            toks = torch.cat([best[k][1], tok[:, None].expand_as(lat)])
            top = torch.topk(vals, min(TOP_ACTS, len(vals)), dim=0)
            best[k] = (top.values, toks.gather(0, top.indices))
    return {k: torch.where(v > 0, t, -1) for k, (v, t) in best.items()}, n


def lexicality(top_tokens: torch.Tensor, feature: int) -> tuple[float, int | None]:
    """(share of the latent's top activations taken by its most common token, that token's id)."""
    toks = [t for t in top_tokens[:, feature].tolist() if t >= 0]
    if not toks:
        return float("nan"), None
    token, count = Counter(toks).most_common(1)[0]
    return count / len(toks), token


def main(names: list[str]) -> None:
    cfgs = {n: run_config(f"sae={n}", command="find") for n in names}
    cfg = cfgs[names[0]]
    model = load_model(cfg.model)
    saes = {n: load_sae(c.sae, model) for n, c in cfgs.items()}
    top_tokens, n_read = top_activation_tokens(model, saes, cfg)
    tok = model.tokenizer
    rows, raw = [], []
    for path in sorted(PERSONA_DIR.glob("*.yaml")):
        persona = load_persona(path, shipped=True)
        for n, sae in saes.items():
            res = find_features(model, sae, persona, cfgs[n].finder, cfg.seed)
            s, top = res.summary, res.rows[:10]
            lex = [lexicality(top_tokens[n], r["feature"]) for r in top]
            lex1, token = lex[0] if lex else (float("nan"), None)
            raw.append({"persona": persona.name, "sae": n, "top_feature": s["top_feature"],
                        "top_tokens": top[0]["top_tokens"] if top else "", "lexicality_top1": lex1,
                        "lexical_token": tok.decode([token]) if token is not None else None,
                        "single_token_in_top10": sum(x > LEXICAL for x, _ in lex),
                        "stability_top10_overlap": s["stability_top10_overlap"], "reuse_rate": s["reuse_rate"],
                        "reuse_rate_shuffled": s["reuse_rate_shuffled"], "significant_in_top10":
                        sum(r["significant"] for r in top), "top_score": s["top_score"],
                        "chance_p95": s["shuffled_max_score_p95"]})
            r = raw[-1]
            rows.append(f"| {r['persona']} | {n} | {r['top_feature']} | {r['top_tokens'].replace(' | ', ' / ')[:40]} | "
                        f"{r['lexicality_top1']:.2f} ({r['lexical_token']!r}) | {r['single_token_in_top10']}/10 | "
                        f"{r['stability_top10_overlap']}/10 | {r['reuse_rate']:.2f} ({r['reuse_rate_shuffled']:.2f}) | "
                        f"{r['significant_in_top10']}/10 | {r['top_score']:.2f} ({r['chance_p95']:.2f}) |")
    out = ["# The finder on two SAEs", "",
           f"`python scripts/compare_saes.py {' '.join(names)}`. Seed {cfg.seed}; finder settings as shipped. "
           f"Lexicality: share of a latent's {TOP_ACTS} largest activations on {n_read:,} held-out corpus tokens "
           f"taken by its most common token (single-token: > {LEXICAL}). Stability: top-10 overlap between rankings "
           "on two random halves of the pairs. Reuse: of latents significant on assistant chats, the share also "
           "significant on narratives (in brackets: with narrative labels shuffled). Score: the top latent's shared "
           "score (in brackets: the 95th percentile of the best score with labels shuffled).", "",
           "| persona | SAE | top latent | its top tokens (persona texts) | lexicality (token) | single-token in top 10 "
           "| stability | reuse (shuffled) | significant in top 10 | score (chance p95) |",
           "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    for n in names:
        mine = [r for r in raw if r["sae"] == n]
        out.append(f"- `{n}`: {sum(r['lexicality_top1'] > LEXICAL for r in mine)} of {len(mine)} personas have a "
                   f"single-token top latent; mean stability {sum(r['stability_top10_overlap'] for r in mine) / len(mine):.1f}/10; "
                   f"{len({r['top_feature'] for r in mine})} distinct top latents.")
    print("\n".join(out) + "\n")
    print(f"<!-- {json.dumps(raw)} -->")


if __name__ == "__main__":
    main(sys.argv[1:] or ["smollm2_135m_l15_topk_v1", "smollm2_135m_l15_topk_v2"])
