"""Pick the SAE layer for the embedded model: where do narrative and assistant trait directions agree?

For every persona and layer, the difference-of-means residual direction of the narrative pairs
(trait - neutral, mean over measured tokens) is applied to the assistant pairs; its paired effect
size d_z says how well "the trait in stories" separates "the trait in the assistant". A layer where
this transfer is strong is where a single SAE latent could be shared. Output: a Markdown table.

    python scripts/layer_sweep.py > saes/layer_sweep.md
"""

from __future__ import annotations

import sys

import torch

from psm_repro.config import ModelConfig
from psm_repro.core.chat import encode_chat, encode_text
from psm_repro.core.loading import load_model
from psm_repro.core.personas import PERSONA_DIR, load_persona
from psm_repro.core.stats import paired_effect


@torch.inference_mode()
def item_means(model, items, batch=16):
    """(layers+1, N, D): mean residual over each item's measured tokens, at every layer output."""
    out = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        ids, attn = model.pad_batch([e.ids for e in chunk])
        mask = torch.zeros_like(attn, dtype=torch.float)
        for j, e in enumerate(chunk):
            mask[j, : len(e.mask)] = torch.tensor(e.mask, dtype=torch.float)
        hs = model.model(input_ids=ids, attention_mask=attn, output_hidden_states=True, use_cache=False).hidden_states
        h = torch.stack(hs)  # (L+1, B, T, D)
        out.append((h * mask[None, ..., None]).sum(2) / mask.sum(1)[None, :, None])
    return torch.cat(out, 1)


def main(layers: list[int]) -> None:
    model = load_model(ModelConfig())
    tok = model.tokenizer
    rows = {}
    for path in sorted(PERSONA_DIR.glob("*.yaml")):
        p = load_persona(path)
        sets = {
            "n": item_means(model, [encode_text(tok, t, False) for t in p.narrative]),
            "nn": item_means(model, [encode_text(tok, t, False) for t in p.narrative_neutral]),
            "a": item_means(model, [encode_chat(tok, c) for c in p.assistant]),
            "an": item_means(model, [encode_chat(tok, c) for c in p.assistant_neutral]),
        }
        for layer in layers:
            h = layer + 1  # hidden_states[0] is the embedding output
            d_n = (sets["n"][h] - sets["nn"][h]).mean(0)
            proj = (sets["a"][h] - sets["an"][h]) @ (d_n / d_n.norm())
            rows.setdefault(layer, {})[p.name] = float(paired_effect(proj[:, None])[0])
    names = sorted(next(iter(rows.values())))
    print("| layer | " + " | ".join(names) + " | mean |")
    print("|---" * (len(names) + 2) + "|")
    for layer in layers:
        vals = [rows[layer][n] for n in names]
        print(f"| {layer} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {sum(vals) / len(vals):.2f} |")


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [3, 6, 9, 12, 15, 18, 21, 24, 27])
