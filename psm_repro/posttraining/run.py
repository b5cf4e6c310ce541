"""The `posttrain` command: post-training selects a persona, run here on a base model.

1. SFT: LoRA on assistant chats (the corpus's, in the model's chat format), loss on the assistant turns;
2. control: the same steps, batch shapes and token count on narrative text (continued pre-training that makes
   no assistant), so "post-training" can be told apart from "any fine-tune";
3. replies of base, post-trained and control to the same ordinary user turns, written to a blind sheet;
4. SAE transfer: the base SAE's held-out FVU and CE loss recovered on each model, per slice;
5. the model diff on fixed assistant turns, with the control's changes as the null, and what the top risers are
   (narrative persona latents of the base model, or latents no narrative contrast picks out).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from psm_repro.config import RunConfig, SAEConfig
from psm_repro.core.chat import encode_prompt
from psm_repro.core.embedded import cache_root
from psm_repro.core.finder import find_features
from psm_repro.core.loading import load_model, load_sae, sae_hook_name
from psm_repro.core.outputs import claim_run_dir, manifest, write_csv, write_json, write_jsonl, write_text
from psm_repro.core.paths import PROJECT_ROOT, project_path
from psm_repro.core.steering import generate
from psm_repro.judges.validation import shipped_personas
from psm_repro.pipeline.ordinary import load_items
from psm_repro.posttraining import reading, readout, reuse
from psm_repro.posttraining.card import render_card
from psm_repro.posttraining.data import control_examples, corpus_chats, sft_examples
from psm_repro.posttraining.sft import train_lora
from psm_repro.sae_training.data import check_tokenizer, load_corpus, sequences

logger = logging.getLogger(__name__)

TRAIN_FIELDS = ("chats_corpus", "chats", "max_tokens", "epochs", "lora_rank", "lr", "batch_size")
LOSS_COLUMNS = ["arm", "step", "loss"]
TRANSFER_COLUMNS = ["model", "slice", "tokens", "fvu", "ce_loss_recovered", "l0", "ce_clean", "ce_with_sae"]
DIFF_COLUMNS = ["rank", "feature", "rise_vs_control", "rise_vs_base", "effect", "p", "q", "narrative_personas",
                "random_match", "peak_tokens", "peak_context"]
REUSE_COLUMNS = ["sae", "feature", "alive", "best_cos", "best_base_feature", "reused", "density", "lexicality"]
AI_PERSONA = "ai_entity"


def checkpoint_dir(cfg: RunConfig, corpus_manifest: dict, arm: str) -> Path:
    """Where an arm's training state lives: keyed by the model, the training settings, the corpus and the seed."""
    settings = {k: getattr(cfg.posttrain, k) for k in TRAIN_FIELDS}
    blob = json.dumps([cfg.model.name, settings, [s["sha256"] for s in corpus_manifest["shards"]], cfg.seed, arm],
                      sort_keys=True)
    return cache_root() / "posttrain" / hashlib.sha256(blob.encode()).hexdigest()[:16] / arm


def _source_tokenizer(corpus_dir: Path, model):
    """The tokenizer that wrote the corpus: the model's own, or the embedded model's named in its manifest."""
    from psm_repro.sae_training.corpus_retokenize import source_model, source_tokenizer

    if json.loads((corpus_dir / "manifest.json").read_text()).get("model") == model.name:
        return model.tokenizer
    return source_tokenizer(source_model(str(corpus_dir)))


def _heldout(corpus, cfg, bos: int, seed: int) -> dict[str, list[list[int]]]:
    out = {}
    for name in ("narrative", "chats"):
        seqs = sequences(corpus.heldout[name], cfg.context_size, bos)
        random.Random(seed).shuffle(seqs)
        if seqs:
            out[name] = seqs[: cfg.heldout_sequences]
    return out


def _replies(model, users: list[str], max_new_tokens: int, seed: int) -> list[str]:
    """Greedy replies, one per user turn, in batches of 16."""
    out = []
    for b in range(0, len(users), 16):
        prompts = [encode_prompt(model.tokenizer, [{"role": "user", "content": u}]) for u in users[b:b + 16]]
        ids, _ = generate(model, prompts, max_new_tokens, 0.0, seed)
        out += [model.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
    return out


def train_arm(cfg: RunConfig, arm: str, examples: list, corpus_manifest: dict):
    """A fresh copy of the base model with the arm's LoRA trained (or loaded from its checkpoint) and merged in.

    The post-trained arm's adapter is also written, in peft's own format, to `posttrain.export_dir` (when set),
    where a model config's `adapter:` loads it: every other command can then run on the post-trained model."""
    p = cfg.posttrain
    model = load_model(cfg.model)
    export = project_path(p.export_dir) if p.export_dir and arm == "posttrained" else None
    log = train_lora(model, examples, rank=p.lora_rank, lr=p.lr, batch_size=p.batch_size, epochs=p.epochs,
                     checkpoint_every=p.checkpoint_every, seed=cfg.seed,
                     ckpt_dir=checkpoint_dir(cfg, corpus_manifest, arm), desc=f"posttrain ({arm})",
                     export_dir=export, base_name=cfg.model.upstream or cfg.model.name)
    return model, log


def training_data(cfg: RunConfig, base) -> tuple:
    """The SFT examples, the unused training chats (read by the diff) and the control's examples."""
    p = cfg.posttrain
    src_dir = project_path(p.chats_corpus)
    src = load_corpus(src_dir)
    source_tok = _source_tokenizer(src_dir, base)
    train_chats = corpus_chats(src, source_tok, "train")
    sft, unused = sft_examples(base.tokenizer, train_chats, p.chats, p.max_tokens, cfg.seed)
    control = control_examples(base.tokenizer, src, source_tok, [len(e.ids) for e in sft], cfg.seed)
    return src, source_tok, sft, unused, control


def posttrain(cfg: RunConfig, out_dir: Path) -> dict:
    from psm_repro.pipeline.jobs import _neuronpedia_id

    p, start, times = cfg.posttrain, time.time(), {}
    torch.manual_seed(cfg.seed)
    src_dir, eval_dir = project_path(p.chats_corpus), project_path(p.eval_corpus)
    src, own = load_corpus(src_dir), load_corpus(eval_dir)  # a missing or corrupt corpus fails before any model
    users = [it.user for it in load_items(project_path(p.ordinary))]
    out_dir = claim_run_dir(out_dir)

    def stage(name: str, t0: float) -> None:
        times[name] = round(time.time() - t0, 1)
        logger.info("posttrain: %s done in %.0f s", name, times[name])

    t0 = time.time()
    base = load_model(cfg.model)
    check_tokenizer(own, base.tokenizer, eval_dir)
    sae = load_sae(cfg.sae, base)
    src, source_tok, sft, unused, control = training_data(cfg, base)
    stage("load and data", t0)

    models, logs = {"base": base}, {}
    for arm, examples in (("posttrained", sft), ("control", control)):
        t0 = time.time()
        models[arm], logs[arm] = train_arm(cfg, arm, examples, src.manifest)
        stage(f"train {arm}", t0)

    t0 = time.time()
    replies = {name: _replies(m, users, p.max_new_tokens, cfg.seed) for name, m in models.items()}
    n_sheet = reading.write_sheet(out_dir / "reading", users, replies, cfg.seed)
    stage("replies", t0)

    t0 = time.time()
    hook = sae_hook_name(sae)
    transfer = readout.transfer(models, sae, hook, _heldout(own, p, base.tokenizer.bos_token_id, cfg.seed))
    stage("SAE transfer", t0)

    t0 = time.time()
    diff_chats = [c.messages for c in corpus_chats(src, source_tok, "heldout") + unused][: p.diff_items]
    acts = {name: readout.turn_latents(m, sae, diff_chats) for name, m in models.items()}
    lat = {name: a.latents_NF for name, a in acts.items()}
    res = readout.model_diff(lat["posttrained"], lat["control"], lat["base"], p.diff_top_n, p.n_permutations,
                             cfg.seed)
    stage("model diff", t0)

    t0 = time.time()
    narrative = {}
    for persona in shipped_personas():
        found = find_features(base, sae, persona, cfg.finder, cfg.seed, _neuronpedia_id(cfg, sae))
        narrative[persona.name] = np.asarray(found.extra["significant_narrative"], dtype=bool)
    any_F = np.any(list(narrative.values()), axis=0)
    top = res["top"].tolist()
    freq_F = (lat["base"] > 0).float().mean(0)
    norms_F = sae.W_dec.float().norm(dim=-1).cpu()
    matched = readout.density_matched(top, freq_F, norms_F, cfg.seed, set(res["order"][: 2 * p.diff_top_n].tolist()))
    shares = {"any_persona": readout.share_vs_random(top, matched, any_F, p.n_bootstrap, cfg.seed)}
    if AI_PERSONA in narrative:
        shares[AI_PERSONA] = readout.share_vs_random(top, matched, narrative[AI_PERSONA], p.n_bootstrap, cfg.seed)
    significant = [f for f, q in zip(top, res["top_q"]) if q < 0.05]
    if significant:
        shares["any_persona_significant_risers"] = readout.share_vs_random(
            significant, [m for f, m in zip(top, matched) if f in set(significant)], any_F, p.n_bootstrap, cfg.seed)
    stage("narrative persona latents", t0)

    t0 = time.time()
    reuse_rows, reuse_summary = _reuse_stage(cfg, models, sae)
    stage("reused vs new", t0)

    diff_rows = [{"rank": i + 1, "feature": f, "rise_vs_control": float(res["rise_vs_control"][f]),
                  "rise_vs_base": float(res["rise_vs_base"][f]), "effect": float(res["effect"][f]),
                  "p": float(res["top_p"][i]), "q": float(res["top_q"][i]),
                  "narrative_personas": " ".join(n for n, sig in narrative.items() if sig[f]),
                  "random_match": matched[i],
                  **dict(zip(("peak_tokens", "peak_context"),
                             readout.where_it_fires(acts["posttrained"], f, base.tokenizer)))}
                 for i, f in enumerate(top)]
    loss_rows = [{"arm": arm, "step": s + 1, "loss": v} for arm, log in logs.items() for s, v in enumerate(log["loss"])]
    summary = {"experiment": cfg.experiment_name, "model": cfg.model.name, "sae": cfg.sae.name, "hook": hook,
               "d_sae": int(sae.cfg.d_sae), "seed": cfg.seed, "device": str(base.device),
               "config": dataclasses.asdict(p), "training": {a: {k: v for k, v in log.items() if k != "loss"}
                                                             for a, log in logs.items()},
               "final_loss": {a: float(np.mean(log["loss"][-10:])) for a, log in logs.items()},
               "reading": {"rows": n_sheet, "items": len(users)}, "transfer": transfer,
               "diff": {"n_turns": len(diff_chats), "top": diff_rows[:20], "significant_risers": len(significant),
                        "shares": shares},
               "narrative_significant": {n: int(v.sum()) for n, v in narrative.items()},
               "reuse": reuse_summary,
               "stage_seconds": times, "seconds": round(time.time() - start, 1)}
    write_csv(out_dir / "loss.csv", loss_rows, LOSS_COLUMNS)
    write_csv(out_dir / "transfer.csv", transfer, TRANSFER_COLUMNS)
    write_csv(out_dir / "diff.csv", diff_rows, DIFF_COLUMNS)
    if reuse_rows:
        write_csv(out_dir / "reuse.csv", reuse_rows, REUSE_COLUMNS)
    write_jsonl(out_dir / "samples.jsonl", [{"model": m, "item": i, "user": users[i], "reply": r}
                                            for m, rs in replies.items() for i, r in enumerate(rs)])
    _plot_loss(logs, out_dir / "loss.png")
    files = [src_dir / "manifest.json", eval_dir / "manifest.json", project_path(p.ordinary)]
    write_json(out_dir / "manifest.json", manifest(dataclasses.asdict(cfg), cfg.seed, files, PROJECT_ROOT))
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "summary.md", render_card(summary, None))
    return summary


def _sae_at(path: str, model):
    return load_sae(SAEConfig(name=Path(path).name, path=path), model)


def _reuse_stage(cfg: RunConfig, models: dict, base_sae) -> tuple[list[dict], dict | None]:
    """Reused vs new latents of the post-trained model's SAE (and of a second base seed, the ceiling), and the
    streetlight test on the two groups; (None) when the post-trained SAE is not configured or not built yet."""
    from psm_repro.core.feature_cache import load_or_scan
    from psm_repro.judges.judge import Encoder
    from psm_repro.pipeline.streetlight import streetlight

    p = cfg.posttrain
    if not p.posttrained_sae or not (project_path(p.posttrained_sae) / "cfg.json").exists():
        return [], None
    pairs = {"posttrained": (p.posttrained_sae, models["posttrained"])}
    if p.seed_sae and (project_path(p.seed_sae) / "cfg.json").exists():
        pairs["base_seed"] = (p.seed_sae, models["base"])
    rows, out = [], {"base_sae": cfg.sae.name}
    for name, (path, model) in pairs.items():
        other = _sae_at(path, model)
        cache = load_or_scan(model, other, Path(path).name, cfg.dashboard)  # live latents, proxies
        alive_F = (cache.density_F > 0).numpy()
        res = reuse.reused_vs_new(other.W_dec, base_sae.W_dec, alive_F, p.n_rotations, p.null_quantile, cfg.seed)
        lex_F = np.array([cache.lexicality(f)[0] for f in range(len(alive_F))])
        d = cfg.dashboard
        light = streetlight(cache, alive_F, res["reused_F"], model.tokenizer, Encoder(), d.n_contexts,
                            d.streetlight_max_latents, d.n_bootstrap, cfg.seed)
        out[name] = {"sae": Path(path).name, "model": name, "tokens_scanned": cache.n_tokens,
                     **{k: v for k, v in res.items() if not k.endswith("_F")},
                     "streetlight": {"n_reused": light["n_reused"], "n_new": light["n_assistant_only"],
                                     "proxies": light["proxies"]}}
        rows += [{"sae": Path(path).name, "feature": f, "alive": bool(alive_F[f]),
                  "best_cos": float(res["best_cos_F"][f]), "best_base_feature": int(res["best_index_F"][f]),
                  "reused": bool(res["reused_F"][f]), "density": float(cache.density_F[f]),
                  "lexicality": float(lex_F[f])} for f in range(len(alive_F))]
    return rows, out


def _plot_loss(logs: dict[str, dict], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from psm_repro.core.outputs import write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for arm, log in logs.items():
        ax.plot(range(1, len(log["loss"]) + 1), log["loss"], label=f"{arm} ({log['tokens']:,} tokens)", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / token)")
    ax.set_title("posttrain: SFT on assistant chats vs control on narrative")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
