"""Feature dashboards: what a latent fires on in a reference corpus, what it writes, and how it separates a
persona's trait items from their neutral twins (pages: psm_repro/report/dashboard_pages.py).

sae-dashboard (the maintained fork of sae_vis) draws richer pages, but it runs a TransformerLens
HookedTransformer over a token tensor feature batch by feature batch; here every latent's top contexts come
from one cached scan (psm_repro/core/feature_cache.py) over the model's own HF forward, so a page costs a forward
over a handful of sequences and works offline for any SAE this toolkit loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from psm_repro.core.feature_cache import HIST_EDGES, FeatureCache
from psm_repro.core.hooked import HookedModel
from psm_repro.core.loading import sae_encode, sae_hook_name

LEFT, RIGHT = 12, 4  # tokens shown around a context's peak


@dataclass
class Context:
    tokens: list[str]
    acts: list[float]
    peak: int           # index of the peak token in `tokens`
    value: float


@dataclass
class Dashboard:
    feature: int
    density: float                 # share of reference tokens it fires on
    lexicality: float              # share of its top activations taken by its most common token
    lexical_token: str
    n_top: int                     # top activations lexicality was measured on
    quantiles: dict[str, float]    # of positive activations (p50, p90, p99) and the max
    hist: list[int]                # counts per HIST_EDGES bin
    contexts: list[Context]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    sets: dict[str, list[float]] = field(default_factory=dict)  # persona item activations per set
    neuronpedia_url: str = ""


def show_token(tokenizer, token_id: int) -> str:
    """A token as a reader should see it: a newline as ⏎, a token of spaces as ␣s."""
    text = tokenizer.decode([token_id]).replace("\n", "⏎")
    return text if text.strip() else (text.replace(" ", "␣") or "∅")


def final_norm(model: HookedModel):
    """The norm before the unembedding (Llama/Gemma `model.norm`, GPT-2 `transformer.ln_f`), or None."""
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.final_layernorm"):
        mod = model.model
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if mod is not None:
            return mod
    return None


@torch.no_grad()
def logit_effects(model: HookedModel, sae, features: list[int], n: int = 10
                  ) -> list[tuple[list[tuple[str, float]], list[tuple[str, float]]]]:
    """Per latent, the tokens its decoder direction promotes and suppresses most: the direction through the
    final norm and the unembedding (sae-dashboard's logit table; the norm's 1/rms scale is one constant per
    latent, so it changes the values' scale, not the order)."""
    d_ND = sae.W_dec[features].float()
    norm = final_norm(model)
    if norm is not None:
        p = next(norm.parameters())
        d_ND = d_ND.to(device=p.device, dtype=p.dtype)
        d_ND = (norm(d_ND) - norm(torch.zeros_like(d_ND))).float()  # minus a LayerNorm's bias, the same for all
    w_VD = model.model.get_output_embeddings().weight.float()
    logits_NV = d_ND.to(w_VD.device) @ w_VD.T
    out = []
    for row in logits_NV:
        up, down = row.topk(n), (-row).topk(n)
        out.append(([(show_token(model.tokenizer, int(i)), float(v)) for v, i in zip(up.values, up.indices)],
                    [(show_token(model.tokenizer, int(i)), -float(v)) for v, i in zip(down.values, down.indices)]))
    return out


@torch.no_grad()
def context_activations(model: HookedModel, sae, cache: FeatureCache, features: list[int], n_contexts: int,
                        batch_size: int = 16) -> list[list[Context]]:
    """Per latent, its top `n_contexts` reference contexts with the latent's activation on every shown token
    (one forward over the distinct sequences all of them need)."""
    wanted = []
    for f in features:
        keep = cache.top_values_KF[:, f] > 0
        pairs = list(zip(cache.top_seq_KF[keep, f].tolist(), cache.top_pos_KF[keep, f].tolist()))
        wanted.append(pairs[:n_contexts])
    seq_ids = sorted({s for pairs in wanted for s, _ in pairs})
    acts: dict[int, torch.Tensor] = {}
    cols = torch.tensor(features, dtype=torch.long)
    for start in range(0, len(seq_ids), batch_size):
        chunk = seq_ids[start:start + batch_size]
        ids, attn = model.pad_batch([cache.seqs[s] for s in chunk])
        feats_BTF = sae_encode(sae, model.activations(ids, attn, sae_hook_name(sae))).float().cpu()
        for i, s in enumerate(chunk):
            acts[s] = feats_BTF[i, :, cols]
    out = []
    for j, pairs in enumerate(wanted):
        ctxs = []
        for s, pos in pairs:
            lo, hi = max(0, pos - LEFT), min(len(cache.seqs[s]), pos + RIGHT + 1)
            toks = [show_token(model.tokenizer, t) for t in cache.seqs[s][lo:hi]]
            vals = acts[s][lo:hi, j].tolist()
            ctxs.append(Context(toks, vals, pos - lo, float(acts[s][pos, j])))
        out.append(ctxs)
    return out


def build(model: HookedModel, sae, cache: FeatureCache, features: list[int], n_contexts: int,
          set_latents: dict[str, torch.Tensor] | None = None, neuronpedia_id: str | None = None,
          batch_size: int = 16) -> list[Dashboard]:
    """One dashboard per latent in `features`."""
    contexts = context_activations(model, sae, cache, features, n_contexts, batch_size)
    effects = logit_effects(model, sae, features)
    boards = []
    for f, ctxs, (up, down) in zip(features, contexts, effects):
        lex, tok, n_top = cache.lexicality(f)
        p50, p90, p99 = cache.quantiles(f)
        top = float(cache.top_values_KF[0, f])
        boards.append(Dashboard(
            feature=f, density=float(cache.density_F[f]), lexicality=lex,
            lexical_token=show_token(model.tokenizer, tok) if tok is not None else "",
            n_top=n_top, quantiles={"p50": p50, "p90": p90, "p99": p99, "max": top},
            hist=cache.hist_FB[f].tolist(), contexts=ctxs, promoted=up, suppressed=down,
            sets={s: v[:, f].tolist() for s, v in (set_latents or {}).items()},
            neuronpedia_url=f"https://www.neuronpedia.org/{neuronpedia_id}/{f}" if neuronpedia_id else ""))
    return boards


def feature_columns(cache: FeatureCache, model: HookedModel, sae, features: list[int]) -> dict[int, dict]:
    """The features.csv columns a dashboard adds, for every listed latent (no forward pass needed)."""
    effects = logit_effects(model, sae, features, n=5)
    out = {}
    for f, (up, _) in zip(features, effects):
        lex, tok, n_top = cache.lexicality(f)
        out[f] = {"density": float(cache.density_F[f]), "lexicality": lex, "lexicality_n": n_top,
                  "lexical_token": show_token(model.tokenizer, tok) if tok is not None else "",
                  "promoted_tokens": " | ".join(t for t, _ in up)}
    return out


def hist_bins() -> list[tuple[float, float]]:
    return list(zip(HIST_EDGES[:-1].tolist(), HIST_EDGES[1:].tolist()))
