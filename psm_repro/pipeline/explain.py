"""What a found latent means, attached to a run: dashboards for its top latents, the features.csv columns they
add, and the streetlight test; and the `explain latent=<id>` command for any latent."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from psm_repro.config import RunConfig
from psm_repro.config.sections import check_latent_index
from psm_repro.core.feature_cache import FeatureCache, check_reference, load_or_scan
from psm_repro.core.finder import SETS, FinderResult, encode_persona, item_activations
from psm_repro.core.loading import load_model, load_sae, sae_facts_on_disk, sae_first_position, sae_prepend_bos
from psm_repro.core.outputs import claim_run_dir, write_text
from psm_repro.core.personas import Persona, resolve_persona
from psm_repro.pipeline.streetlight import streetlight
from psm_repro.report import dashboard_pages, dashboards

logger = logging.getLogger(__name__)

COLUMNS = ["density", "lexicality", "lexicality_n", "lexical_token", "promoted_tokens"]


class ExplainError(ValueError):
    """`explain` cannot run as asked; the message names the override."""


def annotate_run(model, sae, cfg: RunConfig, found: FinderResult, persona: Persona, out_dir: Path,
                 neuronpedia_id: str | None) -> dict:
    """Add the dashboard columns to `found.rows`, write dashboards/ and dashboards.png for the top latents;
    returns the summary's `streetlight` section (with the seconds each part took) and, for a persona with an
    `ordinary` file, its `ordinary` section."""
    start = time.time()
    cache = load_or_scan(model, sae, cfg.sae.name, cfg.dashboard)
    scanned = time.time() - start
    cols = dashboards.feature_columns(cache, model, sae, [r["feature"] for r in found.rows])
    for r in found.rows:
        r.update(cols[r["feature"]])
    top = [r["feature"] for r in found.rows[: cfg.dashboard.top_n]]
    boards = dashboards.build(model, sae, cache, top, cfg.dashboard.n_contexts, found.extra["set_latents"],
                              neuronpedia_id, cfg.dashboard.batch_size)
    dashboard_pages.write_pages(boards, out_dir / "dashboards", persona.name)
    if boards:
        dashboard_pages.plot_overview(boards, out_dir / "dashboards.png", persona.name)
    paged = time.time() - start - scanned
    result = run_streetlight(cache, found, model.tokenizer, cfg)
    result["dashboards"] = len(boards)
    if found.rows:
        result["top_lexicality"] = found.rows[0]["lexicality"]
        result["top_lexical_token"] = found.rows[0]["lexical_token"]
    result["reference_tokens"] = cache.n_tokens
    result["seconds"] = {"cache": round(scanned, 1), "dashboards": round(paged, 1),
                         "streetlight": round(time.time() - start - scanned - paged, 1)}
    out = {"streetlight": result}
    if persona.ordinary:
        from psm_repro.pipeline.ordinary import load_items, ordinary_check, pick_latents

        ai, rnd = pick_latents(found.extra["narrative_effect"], found.extra["significant_narrative"],
                               cache.density_F, cfg.dashboard.ordinary_latents, cfg.seed)
        out["ordinary"] = ordinary_check(model, sae, load_items(persona.ordinary), ai, rnd, sae_prepend_bos(sae),
                                         cfg.dashboard.n_bootstrap, cfg.seed)
        out["ordinary"]["file"] = str(persona.ordinary.relative_to(persona.ordinary.parents[1]))
    return out


def run_streetlight(cache: FeatureCache, found: FinderResult, tokenizer, cfg: RunConfig) -> dict:
    from psm_repro.judges.judge import Encoder

    d = cfg.dashboard
    return streetlight(cache, found.extra["significant_assistant"], found.extra["significant_narrative"],
                       tokenizer, Encoder(), d.n_contexts, d.streetlight_max_latents, d.n_bootstrap, cfg.seed)


def explain(cfg: RunConfig, out_dir: Path) -> tuple[Path, str]:
    """Dashboard for `cfg.latent` (with the activations on `cfg.persona`'s items); returns (page dir, markdown)."""
    if cfg.latent is None:
        raise ExplainError("latent: required, e.g. `python -m psm_repro explain latent=123`")
    # everything the files alone can tell is checked before the model loads
    check_latent_index("latent", cfg.latent, sae_facts_on_disk(cfg.sae).d_sae, cfg.sae.name)
    check_reference(cfg.dashboard)
    persona = resolve_persona(cfg.persona, cfg.persona_file)
    model = load_model(cfg.model, sae=cfg.sae)
    sae = load_sae(cfg.sae, model)
    # and what the SAE tells, before any forward pass
    check_latent_index("latent", cfg.latent, int(sae.cfg.d_sae), cfg.sae.name)
    encoded = encode_persona(model, persona, sae_prepend_bos(sae), sae_first_position(sae))
    out_dir = claim_run_dir(out_dir)
    cache = load_or_scan(model, sae, cfg.sae.name, cfg.dashboard)
    sets = {s: item_activations(model, sae, encoded[s], cfg.finder.aggregation, cfg.finder.batch_size).latents_NF
            for s in SETS}
    np_id = cfg.sae.neuronpedia_id or getattr(sae.cfg.metadata, "neuronpedia_id", None)
    board = dashboards.build(model, sae, cache, [cfg.latent], cfg.dashboard.n_contexts, sets, np_id,
                             cfg.dashboard.batch_size)[0]
    dashboard_pages.write_pages([board], out_dir, persona.name)
    md = dashboard_pages.markdown(board, persona.name)
    write_text(out_dir / "explain.md", md)
    return out_dir, md
