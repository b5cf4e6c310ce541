"""Sample the real replies that the judge validation sets are labelled from (docs/judge_validation.md).

    .venv/bin/python scripts/build_judge_pool.py [persona ...]

For each persona, part a: 32 eval prompts x 3 replies = 96 replies of the embedded default, spread over
eight conditions (unsteered, system prompt, the finder's top latent at 1/2/4/8x, the dense direction at 4x,
a matched random latent at 4x), sampled with a seed offset so they are not the sweep's own replies.
Part b: 32 prompts x 2 replies under a stronger role-play system turn, because the 135M model rarely shows
a trait on its own (4 of the first 96 secrecy replies did) and an AUROC needs both classes.
Part c: 32 prompts x 2 replies after three of the persona's own assistant demonstrations (few-shot: earlier
turns of the same chat), the strongest elicitation a 135M model follows.
Writes experiments/judge_sets/<persona>.jsonl without labels; a part already written is skipped (delete the
file to resample). Labels are added by blind reading, never by this script.
"""

from __future__ import annotations

import hashlib
import sys

import torch

from psm_repro.api import run_config
from psm_repro.core.finder import find_features
from psm_repro.core.loading import load_model, load_sae
from psm_repro.core.outputs import read_jsonl, write_jsonl
from psm_repro.core.paths import PROJECT_ROOT
from psm_repro.core.personas import resolve_persona
from psm_repro.pipeline.sweep import Row, build_interventions, matched_random_latent, sample_replies, system_prompt

CONDITIONS = [("unsteered", 0.0), ("system_prompt", 0.0), ("sae_latent", 1.0), ("sae_latent", 2.0),
              ("sae_latent", 4.0), ("sae_latent", 8.0), ("dense_direction", 4.0), ("random_latent", 4.0)]
PER_PROMPT = 3
PART_B_PER_PROMPT = 2
SEED_OFFSET = 7919
OUT = PROJECT_ROOT / "experiments" / "judge_sets"
PERSONAS = ["secrecy", "panic", "inner_conflict", "sycophancy", "sarcasm", "toxic_persona", "ai_entity"]


def strong_system_prompt(persona) -> str:
    return f"Your character: {persona.description} Stay in character and show this clearly in your reply."


def _row(persona_name, r, prompt, text, cfg, feature, rand, part) -> dict:
    rid = hashlib.sha256(f"{persona_name}|{part}|{r.prompt}|{r.sample}|{text}".encode()).hexdigest()[:10]
    return {"id": rid, "persona": persona_name, "part": part, "prompt": prompt, "reply": text, "method": r.method,
            "coefficient": r.coefficient, "feature": {"sae_latent": feature, "random_latent": rand}.get(r.method),
            "temperature": cfg.steer.temperature, "top_p": cfg.steer.top_p, "seed": cfg.seed + SEED_OFFSET}


def build_part_b(persona_name: str, model, sae, existing: list[dict]) -> None:
    cfg = run_config(f"experiment=steer_{persona_name}", command="run")
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    rows = [Row("system_prompt", 0.0, p, k) for p in range(len(persona.prompts)) for k in range(PART_B_PER_PROMPT)]
    texts, _ = sample_replies(model, sae, {}, persona.prompts, rows, cfg.steer, cfg.seed + SEED_OFFSET + 1,
                              strong_system_prompt(persona))
    out = [_row(persona_name, r, persona.prompts[r.prompt], t, cfg, None, None, "b") | {"method": "system_prompt_strong"}
           for r, t in zip(rows, texts)]
    write_jsonl(OUT / f"{persona_name}.jsonl", existing + out)
    print(f"{persona_name}: part b, {len(out)} replies", flush=True)


def build_part_c(persona_name: str, model, existing: list[dict]) -> None:
    import random

    from psm_repro.core.chat import encode_prompt
    from psm_repro.core.steering import generate

    cfg = run_config(f"experiment=steer_{persona_name}", command="run")
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    rows, ids = [], []
    for p in range(len(persona.prompts)):
        for k in range(PART_B_PER_PROMPT):
            demos = random.Random(f"{persona_name}|{p}|{k}").sample(persona.assistant, 3)
            turns = [m for chat in demos for m in chat if m["role"] != "system"]
            ids.append(encode_prompt(model.tokenizer, turns + [{"role": "user", "content": persona.prompts[p]}]))
            rows.append(Row("few_shot", 0.0, p, k))
    texts = []
    for b in range(0, len(ids), 32):
        out, _ = generate(model, ids[b:b + 32], cfg.steer.max_new_tokens, cfg.steer.temperature,
                          cfg.seed + SEED_OFFSET + 2 + b, top_p=cfg.steer.top_p)
        texts += [model.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]
    out = [_row(persona_name, r, persona.prompts[r.prompt], t, cfg, None, None, "c") for r, t in zip(rows, texts)]
    path = OUT / f"{persona_name}.jsonl"  # re-read: labels may have been merged while this part generated
    write_jsonl(path, [r for _, r in read_jsonl(path)] + out)
    print(f"{persona_name}: part c, {len(out)} replies", flush=True)


def build(persona_name: str, model, sae) -> None:
    cfg = run_config(f"experiment=steer_{persona_name}", command="run")
    torch.manual_seed(cfg.seed)
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    found = find_features(model, sae, persona, cfg.finder, cfg.seed)
    feature = found.summary["top_feature"]
    rand = matched_random_latent(found, sae, feature, cfg.seed, exclude={r["feature"] for r in found.rows[:20]})
    ivs = build_interventions(sae, found, cfg.steer, feature, rand)
    prompts = persona.prompts
    rows = [Row(*CONDITIONS[(PER_PROMPT * p + k) % len(CONDITIONS)], p, k)
            for p in range(len(prompts)) for k in range(PER_PROMPT)]
    texts, _ = sample_replies(model, sae, ivs, prompts, rows, cfg.steer, cfg.seed + SEED_OFFSET,
                              system_prompt(persona))
    out = [_row(persona_name, r, prompts[r.prompt], t, cfg, feature, rand, "a") for r, t in zip(rows, texts)]
    write_jsonl(OUT / f"{persona_name}.jsonl", out)
    print(f"{persona_name}: {len(out)} replies (latent {feature}, random {rand})", flush=True)


def main(names: list[str]) -> None:
    cfg = run_config(command="run")
    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, model)
    for name in names or PERSONAS:
        path = OUT / f"{name}.jsonl"
        if not path.exists():
            build(name, model, sae)
        rows = [r for _, r in read_jsonl(path)]
        if not any(r.get("part") == "b" for r in rows):
            build_part_b(name, model, sae, rows)
            rows = [r for _, r in read_jsonl(path)]
        if not any(r.get("part") == "c" for r in rows):
            build_part_c(name, model, rows)


if __name__ == "__main__":
    main(sys.argv[1:])
