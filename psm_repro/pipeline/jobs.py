"""The commands as plain functions: `run`, `find`, `steer_once`, `train_sae`. Hydra never reaches here."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from psm_repro.config import RunConfig
from psm_repro.config.sections import check_latent_index
from psm_repro.core.chat import ChatEncodingError, chat_format, encode_chat, encode_prompt
from psm_repro.core.embedded import cache_root
from psm_repro.core.feature_cache import check_reference
from psm_repro.core.finder import FEATURE_COLUMNS, check_persona_tokens, find_features
from psm_repro.core.loading import load_model, load_sae, sae_facts_on_disk, sae_first_position, weights_id
from psm_repro.core.outputs import claim_run_dir, manifest, write_csv, write_json, write_jsonl, write_text
from psm_repro.core.paths import PROJECT_ROOT, output_path, project_path
from psm_repro.core.personas import resolve_persona
from psm_repro.core.steering import Intervention, reply, stop_ids
from psm_repro.judges.llm_judge import judge_from_config
from psm_repro.judges.validation import judge_for_run
from psm_repro.peers import stage as peer_stage
from psm_repro.peers.ab_metric import AB_COLUMNS
from psm_repro.peers.methods import METHOD_COLUMNS
from psm_repro.pipeline.explain import COLUMNS as EXPLAIN_COLUMNS, annotate_run
from psm_repro.pipeline.situations import SITUATION_COLUMNS
from psm_repro.pipeline.sweep import STEERING_COLUMNS, check_split, run_sweep, system_prompt
from psm_repro.report import card as report

logger = logging.getLogger(__name__)


def _neuronpedia_id(cfg: RunConfig, sae) -> str | None:
    return cfg.sae.neuronpedia_id or getattr(sae.cfg.metadata, "neuronpedia_id", None)


def _data_files(cfg: RunConfig, persona) -> list[Path]:
    files = [persona.path]
    if cfg.sae.path:
        files += sorted(project_path(cfg.sae.path).glob("*.safetensors")) + [project_path(cfg.sae.path) / "cfg.json"]
    return files


def check_encodable(persona, tokenizer, system: str | None = None, context: int | None = None,
                    new_tokens: int = 0) -> None:
    """Every chat, prompt and narrative of the persona through the model's chat format, before any compute: a
    chat the template cannot express, or an item longer than the model's `context` (an eval prompt plus the
    `new_tokens` a reply may add), fails here naming the file, the item, its length and the limit. Nothing is
    ever cut to fit."""
    from psm_repro.core.chat import text_ids

    items = [(f"search.{key}[{i}]", chat) for key in ("assistant", "assistant_neutral", "situation",
                                                       "situation_neutral")
             for i, chat in enumerate(getattr(persona, key))]
    items += [(f"eval.prompts[{i}]", [{"role": "user", "content": p}]) for i, p in enumerate(persona.prompts)]
    if system:
        items += [("the prompting baseline's system turn", [{"role": "system", "content": system},
                                                            {"role": "user", "content": persona.prompts[0]}])]
    for where, chat in items:
        try:
            ids = (encode_chat if chat[-1]["role"] == "assistant" else encode_prompt)(tokenizer, chat)
        except ChatEncodingError as err:
            raise ChatEncodingError(f"{persona.path}: {where}: {err}") from None
        n = len(ids.ids if hasattr(ids, "ids") else ids)
        room = new_tokens if chat[-1]["role"] != "assistant" else 0
        if context and n + room > context:
            extra = f" + {room} new tokens" if room else ""
            raise ChatEncodingError(f"{persona.path}: {where}: {n} tokens{extra} is longer than the model's context of "
                                    f"{context}; shorten the item (items are never cut)")
    for key in ("narrative", "narrative_neutral"):
        for i, text in enumerate(getattr(persona, key)):
            n = len(text_ids(tokenizer, text)) + 1  # + BOS
            if context and n > context:
                raise ChatEncodingError(f"{persona.path}: search.{key}[{i}]: {n} tokens is longer than the model's "
                                        f"context of {context}; shorten the item (items are never cut)")


def run(cfg: RunConfig, out_dir: Path, steer_too: bool = True) -> dict:
    """Find the persona's shared latents, then (for `run`) steer with the top one against controls."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    if steer_too and persona.source == "caa":
        raise ValueError(f"persona_file={cfg.persona_file}: a CAA A/B file has no open-ended eval prompts, which `run` "
                         "needs; use `find`, or name it as peers.ab_test of a YAML persona (docs/persona_format.md)")
    if cfg.finder.rank_by == "narrative_situation" and not persona.situation:
        raise ValueError(f"finder.rank_by=narrative_situation: {persona.path} has no search.situation / "
                         "search.situation_neutral sets (docs/persona_format.md)")
    if steer_too:  # everything the config, the persona and the SAE's cfg.json tell, before the model loads
        if persona.source == "native" and not persona.has_eval:
            raise ValueError(f"{persona.path}: the persona has no 'eval' section, which `run` needs (use `find`)")
        check_split(persona, cfg.steer)
        check_latent_index("steer.feature", cfg.steer.feature, sae_facts_on_disk(cfg.sae).d_sae, cfg.sae.name)
    out_dir = claim_run_dir(out_dir)
    system = system_prompt(persona) if steer_too and persona.prompts else None
    if cfg.dashboard.enabled:
        check_reference(cfg.dashboard)
    model = load_model(cfg.model, sae=cfg.sae, before_weights=lambda tok, context: check_encodable(
        persona, tok, system, context, max(cfg.steer.max_new_tokens, cfg.finder.situation_max_new_tokens)
        if steer_too else cfg.finder.situation_max_new_tokens))
    sae = load_sae(cfg.sae, model)
    # what needs the SAE itself, before any forward pass
    if steer_too:
        check_latent_index("steer.feature", cfg.steer.feature, int(sae.cfg.d_sae), cfg.sae.name)
    check_persona_tokens(model, sae, persona)

    # 1. which latents fire on both the narrative and the assistant trait sets?
    cache = Path(cfg.finder.cache_dir).expanduser() if cfg.finder.cache_dir else cache_root()
    read, stages = None, {}
    extraction = None
    # persona-vector extraction replies; an imported trait file's assistant contrast is made of them
    if persona.peers and (steer_too or persona.source == "persona_vectors"):
        lap = time.time()
        extraction = peer_stage.extract(model, persona, cfg, cache)
        stages["peer_extraction"] = time.time() - lap
    if persona.situation:  # the assistant in the situation, read on the model's own processing
        from psm_repro.pipeline.situations import read_situations

        lap = time.time()
        read = read_situations(model, sae, persona, cfg.finder, cfg.seed, sae_first_position(sae),
                               cache / "situation_replies")
        stages["situations"] = time.time() - lap
        logger.info("situations read: %.1f s since start", time.time() - start)
    found = find_features(model, sae, persona, cfg.finder, cfg.seed, _neuronpedia_id(cfg, sae),
                          situation=read.acts if read else None)
    logger.info("finder: %.1f s since start", time.time() - start)
    summary = {"experiment": cfg.experiment_name, "persona": persona.name, "persona_format": persona.source,
               "model": cfg.model.name,
               "sae": cfg.sae.name, "hook": sae.cfg.metadata.hook_name, "seed": cfg.seed, "finder": found.summary}
    if read:
        from psm_repro.pipeline.situations import section

        summary["situation"] = section(read, found, cfg.finder, cfg.seed, cfg.dashboard.n_bootstrap)
        write_jsonl(out_dir / "situation_replies.jsonl", read.replies)
    else:
        summary["situation"] = {"skipped": f"{persona.path.name} has no search.situation set"}
    found.summary["headline_feature"] = found.summary["top_feature"]
    if cfg.finder.specificity:
        from psm_repro.pipeline.specificity import specificity

        lap = time.time()
        summary["specificity"] = specificity(model, sae, persona, found.rows, cfg.finder, cfg.seed,
                                             cache / "specificity")
        found.summary["headline_feature"] = summary["specificity"]["headline_feature"]
        stages["specificity"] = time.time() - lap
        logger.info("specificity: %.1f s since start", time.time() - start)

    # what do the found latents mean? dashboards, lexicality and the streetlight test (feature cache)
    if cfg.dashboard.enabled:
        summary.update(annotate_run(model, sae, cfg, found, persona, out_dir, _neuronpedia_id(cfg, sae)))
    write_csv(out_dir / "features.csv", found.rows, FEATURE_COLUMNS + EXPLAIN_COLUMNS + SITUATION_COLUMNS)

    # 2. does injecting it make the assistant show the trait, beyond the controls?
    if steer_too:
        if not persona.has_eval:
            raise ValueError(f"{persona.path}: the persona has no 'eval' section, which `run` needs (use `find`)")
        feature = cfg.steer.feature if cfg.steer.feature is not None else found.summary["headline_feature"]
        if feature is None:
            raise ValueError("no latent passed the finder's activity filter, or every one is generic; "
                             "set steer.feature explicitly")
        # the judge's coherence features read the embedded SmolLM2: reuse it when it is the model under test
        ref = model if cfg.model.is_judge_reference else None
        judge = judge_for_run(persona, cfg.judge.sets_dir, cfg.seed, cfg.judge.folds, backend=cfg.steer.judge,
                              llm_judge=judge_from_config(cfg.steer) if cfg.steer.judge == "llm" else None,
                              ref_model=ref, model=cfg.model.name)
        lap = time.time()
        peers = peer_stage.build(model, sae, persona, extraction, judge[0], cfg, ref)
        stages["peer_vectors"] = time.time() - lap
        sweep = run_sweep(model, sae, persona, found, cfg.steer, cfg.seed, feature, cfg.judge, ref_model=ref,
                          directions=peers.directions, judge=judge,
                          ab_items=persona.peers.ab_test if cfg.peers.enabled and persona.peers else None)
        write_csv(out_dir / "steering.csv", sweep["table"], STEERING_COLUMNS)
        write_csv(out_dir / "methods.csv", sweep["methods"], METHOD_COLUMNS)
        if sweep["ab"]:
            write_csv(out_dir / "ab.csv", sweep["ab"], AB_COLUMNS)
        write_jsonl(out_dir / "samples.jsonl", sweep["samples"])
        report.plot_dose_response(sweep["table"], out_dir / "dose_response.png", persona.name)
        summary["steering"] = {k: v for k, v in sweep.items() if k not in ("table", "samples")}
        summary["peers"] = peers.info
        summary["steering"]["table_test"] = [r for r in sweep["table"] if r["split"] == "test"]
        summary["steering"]["mode"] = cfg.steer.mode
        summary["steering"]["positions"] = cfg.steer.positions
    summary["seconds"] = round(time.time() - start, 1)
    summary["stage_seconds"] = {k: round(v, 1) for k, v in stages.items()}
    record = manifest(dataclasses.asdict(cfg), cfg.seed, _data_files(cfg, persona), PROJECT_ROOT)
    # Gemma-style templates reject system turns, base models get a transcript: say what was done
    record["chat_format"] = chat_format(model.tokenizer)
    record["stop_ids"] = stop_ids(model)
    write_json(out_dir / "manifest.json", record)
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "summary.md", report.render_summary(summary, found.rows))
    return summary


def steer_once(cfg: RunConfig) -> tuple[str, str, int, str]:
    """One prompt, unsteered vs steered (same seed), for a quick look.

    Returns both replies, the latent and its Neuronpedia page ("" when the SAE has no Neuronpedia id).
    """
    feature = cfg.steer.feature
    persona = None
    if feature is None or cfg.steer.mode != "ablate":
        persona = resolve_persona(cfg.persona, cfg.persona_file)
    check_latent_index("steer.feature", feature, sae_facts_on_disk(cfg.sae).d_sae, cfg.sae.name)
    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, model)
    check_latent_index("steer.feature", feature, int(sae.cfg.d_sae), cfg.sae.name)
    scale = 1.0
    if persona is not None:
        found = find_features(model, sae, persona, cfg.finder, cfg.seed)
        feature = found.summary["top_feature"] if feature is None else feature
        scale = float(found.max_activation_F[feature])
    coef = max(cfg.steer.coefficients, key=abs)
    iv = Intervention(mode=cfg.steer.mode, feature=feature, scale=scale)
    s = cfg.steer
    texts = [reply(model, sae, s.prompt, ivs, coef, s.max_new_tokens, s.temperature, cfg.seed, s.positions,
                   s.steer_special) for ivs in ([], [iv])]
    np_id = _neuronpedia_id(cfg, sae)
    return texts[0], texts[1], feature, f"https://www.neuronpedia.org/{np_id}/{feature}" if np_id else ""


def build_corpus(cfg: RunConfig) -> dict:
    """Write (or finish) the SAE training corpus: see psm_repro/sae_training/corpus_build.py."""
    from psm_repro.sae_training.corpus_build import build

    model = load_model(dataclasses.replace(cfg.model, dtype=cfg.corpus.generation_dtype))
    return build(model, cfg.corpus, cfg.seed, output_path(cfg.corpus.out_dir), PROJECT_ROOT / "experiments")


def train_sae(cfg: RunConfig) -> dict:
    """Train the embedded model's SAE on a built corpus (resumes after a kill), then the held-out report."""
    from psm_repro.sae_training.data import check_tokenizer, load_corpus
    from psm_repro.sae_training.train import train

    corpus_dir = project_path(cfg.train_sae.corpus)
    corpus = load_corpus(corpus_dir)  # a missing or corrupt corpus fails here, before the model loads
    model = load_model(cfg.model)
    check_tokenizer(corpus, model.tokenizer, corpus_dir)
    return train(model, corpus, cfg.train_sae, cfg.seed, output_path(cfg.train_sae.out_dir),
                 model_key=weights_id(cfg.model))


def emergent_misalignment(cfg: RunConfig, out_dir: Path) -> dict:
    """`finetune`: see psm_repro/em/run.py."""
    from psm_repro.em.run import emergent_misalignment as run_em

    return run_em(cfg, out_dir)
