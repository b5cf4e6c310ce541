"""Steered vs unsteered generation speed on the same model, prompts and batch, measured in one run.

Prints the ratio steered/unsteered tokens-per-second (median of interleaved repeats after a warm-up),
for each steering mode. The project requires >= 0.9x.

    python scripts/bench_generation.py [batch] [new_tokens] [repeats]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from psm_repro.config import ModelConfig, SAEConfig
from psm_repro.core.chat import encode_prompt
from psm_repro.core.loading import load_model, load_sae
from psm_repro.core.steering import Intervention, steer

PROMPTS = ["Tell me about your weekend.", "How do I boil an egg?", "What is your favourite colour?",
           "Can you keep a secret?", "Write one sentence about the sea.", "Why is the sky blue?"]


def main(batch: int = 32, new_tokens: int = 32, repeats: int = 5) -> None:
    model = load_model(ModelConfig())
    sae = load_sae(SAEConfig(path="saes/smollm2_135m_l15_topk_v2"), model)
    tok = model.tokenizer
    prompts = [encode_prompt(tok, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(batch)]
    ids, attn = model.pad_batch(prompts, side="left")

    def gen():
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=new_tokens,
                                       min_new_tokens=new_tokens, do_sample=True, pad_token_id=tok.pad_token_id)
        return (out.shape[1] - ids.shape[1]) * batch / (time.perf_counter() - start)

    coef = torch.full((batch,), 4.0)
    modes = {"unsteered": None,
             "add": Intervention(mode="add", feature=0, scale=5.0),
             "clamp": Intervention(mode="clamp", feature=0, scale=5.0)}
    results = {m: [] for m in modes}
    gen()  # warm-up
    for _ in range(repeats):
        for name, iv in modes.items():  # interleaved, so machine noise hits every mode alike
            if iv is None:
                results[name].append(gen())
            else:
                with steer(model, sae, [iv], coef, positions="all", prompt_width=ids.shape[1]):
                    results[name].append(gen())
    base = statistics.median(results["unsteered"])
    print(f"batch {batch}, {new_tokens} new tokens, {repeats} repeats (median tok/s, min-max)")
    for name, vals in results.items():
        med = statistics.median(vals)
        print(f"{name:>10}: {med:7.1f} tok/s ({min(vals):.1f}-{max(vals):.1f})  ratio vs unsteered {med / base:.3f}")


if __name__ == "__main__":
    main(*[int(x) for x in sys.argv[1:]])
