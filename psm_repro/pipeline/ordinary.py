"""The AI-entity claim as the essay states it: latents about chatbots, voice assistants and game characters are
commonly active during ordinary user-assistant chats, not only in chats about AI.

A persona that names an `ordinary` file (experiments/ordinary/*.yaml: chats on everyday topics, each with the
same content written as plain prose) gets this check. Its latents are the ones its narrative contrast finds
(narratives about AI systems vs matched human-character narratives): the top `n` narrative-significant
latents by narrative effect. On every item they are read at each token of the chat, split into template
tokens (markup: special tokens, role names; template text: a default system prompt the template adds), the
user's words and the assistant's words, and at each token of the prose. Per item: the share of (token, latent) pairs that fire and
the mean activation. Paired differences (assistant words - prose, template - prose) get BCa intervals over
items, and the same is measured for density-matched random latents (each AI latent paired with the latent of
nearest reference-corpus density), so a shift every latent shows in chats is not read as an AI-entity effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from psm_repro.core import stats
from psm_repro.core.chat import TRANSCRIPT_ROLES, content_spans, fold_system, is_transcript, supports_system
from psm_repro.core.loading import sae_encode, sae_first_position, sae_hook_name
from psm_repro.core.personas import PersonaError, read_yaml

GROUPS = ("markup", "template_text", "user", "assistant", "prose")
ROLE_WORDS = {"system", "user", "assistant", "model"}  # a role name right after a special token is markup


@dataclass
class OrdinaryItem:
    topic: str
    user: str
    assistant: str
    prose: str


def load_items(path: Path) -> list[OrdinaryItem]:
    """Read an ordinary-content file; errors name file and line."""
    data, chk = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("items"), list) or not data["items"]:
        raise PersonaError(f"{path}:1: expected a mapping with a non-empty 'items' list")
    items = []
    for i, it in enumerate(data["items"]):
        if not isinstance(it, dict) or set(it) != {"topic", "user", "assistant", "prose"}:
            chk.fail(f"items[{i}] must have exactly the keys topic, user, assistant, prose", "items", i)
        if not all(isinstance(v, str) and v.strip() for v in it.values()):
            chk.fail(f"items[{i}]: every field must be a non-empty string", "items", i)
        items.append(OrdinaryItem(**it))
    return items


def chat_roles(tokenizer, item: OrdinaryItem) -> tuple[list[int], list[str]]:
    """The chat's token ids as the template renders them, and each token's group, from character offsets: a
    token belongs to a message (user/assistant) when it starts inside that message's text; the rest are the
    template's markup (special tokens, role names, newline tokens) or text the template adds itself (template_text:
    SmolLM2's default system prompt, "You are a helpful AI assistant named SmolLM..."). A base model's transcript
    (`model.chat=false`) adds no text of its own: everything outside the messages ("User:", "Assistant:", the
    newlines) is its markup."""
    messages = [{"role": "user", "content": item.user}, {"role": "assistant", "content": item.assistant}]
    transcript = is_transcript(tokenizer)
    if transcript:
        text = "".join(f"{TRANSCRIPT_ROLES[m['role']]}: {m['content']}\n" for m in messages)
    else:
        if not supports_system(tokenizer):
            messages = fold_system(messages)
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(role, lo, hi) for role, (lo, hi) in zip(("user", "assistant"),
                                                     content_spans(text, [item.user, item.assistant]))]
    special = set(tokenizer.all_special_ids)
    ids = list(enc["input_ids"])
    words = [tokenizer.decode([t]) for t in ids]
    # a token is a message's when any of its characters is (" hello" after "User:" starts on the space)
    roles = [next((r for r, lo, hi in spans if a < hi and max(b, a + 1) > lo), "template_text")
             for a, b in enc["offset_mapping"]]
    for i, t in enumerate(ids):
        if roles[i] != "template_text":
            continue
        if transcript:
            roles[i] = "markup"
            continue
        if t in special or (not words[i].strip() and "\n" in words[i]):
            roles[i] = "markup"
        elif i > 0 and ids[i - 1] in special:  # a role name after a special token, maybe split ("ass", "istant")
            for j in range(i + 1, min(i + 4, len(ids)) + 1):
                if "".join(words[i:j]).strip() in ROLE_WORDS:
                    roles[i:j] = ["markup"] * (j - i)
                    break
    return ids, roles


@torch.no_grad()
def _latents(model, sae, ids: list[int], latents: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    return sae_encode(sae, model.activations(x, torch.ones_like(x), sae_hook_name(sae)))[0][:, latents].float().cpu()


def read_items(model, sae, items: list[OrdinaryItem], latents: list[int], prepend_bos: bool
               ) -> dict[str, list[torch.Tensor]]:
    """Per group, per item: the (tokens, latents) activations of that group's tokens."""
    first = sae_first_position(sae)
    bos = model.tokenizer.bos_token_id
    out: dict[str, list[torch.Tensor]] = {g: [] for g in GROUPS}
    for it in items:
        ids, roles = chat_roles(model.tokenizer, it)
        if prepend_bos and bos is not None and ids[:1] != [bos]:
            ids, roles = [bos] + ids, ["bos"] + roles
        acts = _latents(model, sae, ids, latents)
        for g in ("markup", "template_text", "user", "assistant"):
            out[g].append(acts[[i for i, r in enumerate(roles) if r == g and i >= first]])
        prose = model.tokenizer(it.prose, add_special_tokens=False)["input_ids"]
        lead = [bos] if prepend_bos and bos is not None else []
        acts = _latents(model, sae, lead + prose, latents)
        out["prose"].append(acts[max(first, len(lead)):])
    return out


def _per_item(acts: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(share of token-latent pairs firing, mean activation) per item."""
    rate = np.array([float((a > 0).float().mean()) if a.numel() else np.nan for a in acts])
    mean = np.array([float(a.mean()) if a.numel() else np.nan for a in acts])
    return rate, mean


def summarise(ai: dict[str, list[torch.Tensor]], rnd: dict[str, list[torch.Tensor]], n_bootstrap: int, seed: int
              ) -> dict:
    """Group means and paired contrasts for the AI latents and the random baseline, and AI - random."""
    out: dict = {"groups": {}, "contrasts": {}}
    per = {name: {g: _per_item(acts[g]) for g in GROUPS} for name, acts in (("ai", ai), ("random", rnd))}
    for name in per:
        out["groups"][name] = {}
        for g in GROUPS:
            rate, mean = per[name][g]
            out["groups"][name][g] = {"rate": _ci(stats.bca_interval(rate, n_bootstrap, seed)),
                                      "mean": _ci(stats.bca_interval(mean, n_bootstrap, seed))}
    for g in ("assistant", "user", "markup", "template_text"):
        key = f"{g}_minus_prose"
        out["contrasts"][key] = {}
        for metric, k in (("rate", 0), ("mean", 1)):
            ai_d = per["ai"][g][k] - per["ai"]["prose"][k]
            rnd_d = per["random"][g][k] - per["random"]["prose"][k]
            out["contrasts"][key][metric] = {
                "ai": _ci(stats.bca_interval(ai_d, n_bootstrap, seed)),
                "random": _ci(stats.bca_interval(rnd_d, n_bootstrap, seed)),
                "ai_minus_random": _ci(stats.bca_interval(ai_d - rnd_d, n_bootstrap, seed))}
    chat_any = [bool((a > 0).any()) for a in ai["assistant"]]
    prose_any = [bool((a > 0).any()) for a in ai["prose"]]
    out["items_with_any_firing"] = {"assistant": float(np.mean(chat_any)), "prose": float(np.mean(prose_any))}
    return out


def _ci(t: tuple[float, float, float]) -> dict:
    return {"value": t[0], "ci_low": t[1], "ci_high": t[2]}


def pick_latents(narrative_effect_F: torch.Tensor, significant_narrative_F: np.ndarray, density_F: torch.Tensor,
                 n: int, seed: int) -> tuple[list[int], list[int]]:
    """The top `n` narrative-significant latents by narrative effect, and for each the latent of nearest
    density among the rest (ties broken by a seeded shuffle)."""
    eff = torch.where(torch.as_tensor(significant_narrative_F), narrative_effect_F, torch.tensor(float("-inf")))
    ai = [int(f) for f in torch.argsort(eff, descending=True)[:n] if torch.isfinite(eff[f])]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(density_F))
    taken = set(ai)
    log_d = np.log10(np.maximum(density_F.numpy(), 1e-9))
    rnd = []
    for f in ai:
        cand = [c for c in order if c not in taken]
        best = min(cand, key=lambda c: abs(log_d[c] - log_d[f]))
        rnd.append(int(best))
        taken.add(int(best))
    return ai, rnd


def ordinary_check(model, sae, items: list[OrdinaryItem], ai: list[int], rnd: list[int], prepend_bos: bool,
                   n_bootstrap: int, seed: int) -> dict:
    """Run the check for the given AI latents and their random baseline."""
    if model.tokenizer.chat_template is None and not is_transcript(model.tokenizer):
        return {"skipped": "the model has no chat template, so there are no template tokens to separate"}
    if not ai:
        return {"skipped": "no latent is significant on the narrative contrast"}
    acts = read_items(model, sae, items, ai + rnd, prepend_bos)
    split = {name: {g: [a[:, sl] for a in acts[g]] for g in GROUPS}
             for name, sl in (("ai", slice(0, len(ai))), ("random", slice(len(ai), None)))}
    out = summarise(split["ai"], split["random"], n_bootstrap, seed)
    out.update({"latents": ai, "random_latents": rnd, "n_items": len(items)})
    return out
