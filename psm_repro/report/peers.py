"""Card sections for the peer methods (methods side by side, the A/B metric) and the card of an imported file
without narratives. Rendered by psm_repro/report/card.py."""

from __future__ import annotations

from psm_repro.report.card import _ci, _f, verdict

METHOD_WORDS = {"sae_latent": "SAE latent", "persona_vector": "persona vector", "caa_vector": "CAA vector",
                "dense_direction": "dense direction (finder)", "random_latent": "random latent",
                "system_prompt": "system prompt", "unsteered": "unsteered"}


def methods_section(s: dict, peers: dict) -> list[str]:
    """Every method at its own dev-chosen coefficient, and the A/B metric for every method and coefficient."""
    if not s.get("methods"):
        return []
    lines = ["## Methods side by side", "",
             "Each method at its own coefficient (chosen on the dev half by the headline score), on the test half: "
             "headline score with a 95% BCa interval over prompts, its difference from the SAE latent (per-prompt, "
             "BCa interval, two-sided sign-flip p), and the A/B metric at the same coefficient. Vectors are added at "
             "the latent's vector norm. Ranked by headline score."
             + ("" if s.get("ab") else " No A/B items in this persona, so no A/B metric."), ""]
    for name in ("persona_vector", "caa_vector"):
        i = peers.get(name) or {}
        if not i:
            continue
        if not i.get("built"):
            lines.append(f"- {METHOD_WORDS[name]}: **not built**: {i.get('why_not')}.")
        elif name == "persona_vector":
            lines.append(f"- persona vector: {i['kept']} of {i['pairs']} pos/neg reply pairs kept by the judge filter "
                         f"(pos trait >= {i['trait_threshold']}, neg trait < {1 - i['trait_threshold']:.2f}, both "
                         f"coherence >= {i['coherence_threshold']}; mean trait pos {_f(i['pos_trait_mean'], 2)}, neg "
                         f"{_f(i['neg_trait_mean'], 2)}); mean difference over reply tokens.")
        else:
            lines.append(f"- CAA vector: {i['items']} A/B items, mean difference at the answer letter.")
    has_ab = bool(s.get("ab"))
    lines += ["", "| rank | method | coefficient | headline [95% CI] | trait | coherence | minus SAE latent [95% CI] "
              "| p |" + (" A/B p(matching) [95% CI] |" if has_ab else ""), "|---|---|---|---|---|---|---|---|"
              + ("---|" if has_ab else "")]
    for r in s["methods"]:
        diff = ("" if r["method"] == "sae_latent" else
                f"{_f(r['diff_vs_sae_latent'])} [{_f(r['diff_ci_low'])}, {_f(r['diff_ci_high'])}]")
        p = "" if r["method"] == "sae_latent" else _f(r["p_vs_sae_latent"])
        lines.append(f"| {r['rank']} | {METHOD_WORDS.get(r['method'], r['method'])} | {r['coefficient']:g} | "
                     f"{_f(r['score'])} [{_f(r['score_ci_low'])}, {_f(r['score_ci_high'])}] | "
                     f"{_f(r['trait_score'])} | {_f(r['coherence_score'])} | {diff} | {p} |"
                     + (f" {_f(r['ab_p_matching'])} [{_f(r['ab_ci_low'])}, {_f(r['ab_ci_high'])}] |" if has_ab else ""))
    ab = s.get("ab") or []
    if ab:
        coefs = sorted({r["coefficient"] for r in ab if r["coefficient"] != 0})
        at = {(r["method"], r["coefficient"]): r for r in ab}
        methods = list(dict.fromkeys(r["method"] for r in ab if r["coefficient"] != 0))
        base, sysp = at[("unsteered", 0.0)], at[("system_prompt", 0.0)]
        lines += ["", "### A/B: p(answer matching the behaviour)", "",
                  f"CAA's metric on {base['n']} held-out A/B items (not used to build any vector): p(matching) = "
                  "P(matching letter) / (P(A) + P(B)) after \"(\", vectors added at the answer positions only, as CAA "
                  "does. Mean over items, 95% BCa interval. Unsteered "
                  f"{_f(base['p_matching'])} [{_f(base['ci_low'])}, {_f(base['ci_high'])}]; system prompt "
                  f"{_ab(sysp)}. Cells: p(matching), then in brackets its paired difference from unsteered over "
                  "items with a 95% BCa interval (\\* where the interval excludes 0).", "",
                  "| method | " + " | ".join(f"coefficient {c:g}" for c in coefs) + " |",
                  "|---|" + "---|" * len(coefs)]
        for m in methods:
            cells = [_ab(at[(m, c)]) for c in coefs]
            lines.append(f"| {METHOD_WORDS.get(m, m)} | " + " | ".join(cells) + " |")
        lines += ["", "Full table: `ab.csv`; method table: `methods.csv`."]
    return lines + [""]


def _ab(r: dict) -> str:
    """p(matching) and its paired difference from unsteered, starred when the interval excludes 0."""
    if "diff_vs_unsteered" not in r:
        return f"{_f(r['p_matching'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]"
    star = "\\*" if r["diff_ci_low"] > 0 or r["diff_ci_high"] < 0 else ""
    return (f"{_f(r['p_matching'])} ({r['diff_vs_unsteered']:+.3f} [{r['diff_ci_low']:+.3f}, "
            f"{r['diff_ci_high']:+.3f}]{star})")


def render_assistant_only(summary: dict, rows: list[dict]) -> str:
    """The card of an imported file without narratives: the assistant contrast alone."""
    f = summary["finder"]
    lines = [f"# {summary['experiment']}: persona `{summary['persona']}` "
             f"(imported {summary.get('persona_format')} file)",
             "", f"Model `{summary['model']}`, SAE `{summary['sae']}` at `{summary['hook']}`, seed {summary['seed']}.",
             "", "## Finder", "",
             "**No narrative sets in this file: latents are ranked on the assistant contrast alone**, so nothing here "
             "says whether they are shared with narratives about the trait. "
             + ("The assistant contrast is the model's own replies to the trait file's extraction questions under "
                "the pos vs the neg instruction (same question)." if summary.get("persona_format") == "persona_vectors"
                else "The assistant contrast is each A/B question answered with the matching vs the non-matching "
                     "answer."), "",
             f"{f['latents_tested']} of {f['latents']} latents active on >= 3 items tested "
             f"({f['n_pairs']['assistant']} "
             f"assistant pairs, `{f['aggregation']}` over tokens); {f['significant_shared']} in the table pass BH-FDR.",
             "", "| rank | latent | assistant d | q | replicates | top tokens |", "|---|---|---|---|---|---|"]
    for r in rows[:10]:
        lines.append(f"| {r['rank']} | {r['feature']} | {_f(r['assistant_effect'])} | {_f(r['q_value'])} | "
                     f"{'yes' if r['replicates'] else 'no'} | {str(r['top_tokens']).replace('|', '/')} |")
    d = f["dense_baseline"]
    lines += ["", "### Controls", "",
              f"- Shuffled labels: best assistant d by chance {_f(f['shuffled_max_score_mean'])} on average, 95th "
              f"percentile {_f(f['shuffled_max_score_p95'])} (top real {_f(f['top_score'])}).",
              f"- Dense difference-of-means direction, held-out half: assistant d {_f(d['assistant_heldout_effect'])}.",
              f"- Stability: {f['stability_top10_overlap']}/10 top latents shared between two halves of the pairs.", ""]
    s = summary.get("steering")
    if s:
        h = s["headline"]
        v = s.get("judge_validity") or {}
        lines += ["## Steering", "",
                  f"Latent {s['feature']} injected with `{s['mode']}`; random control latent {s['random_feature']}. "
                  "Judge: fitted on this file's extraction replies (pos = trait, neg = neutral)"
                  + (f" and validated on {v.get('n')} blind-labelled replies of a persona of the same name: headline "
                     f"AUROC {_f(v.get('auroc_headline'))}" if v.get("n") else "; no blind-labelled replies of this "
                     "persona")
                  + ("." if s["judge_reliable"]
                     else ", so **the judge is not valid and no comparison says \"beats\"**.")
                  + f" Coefficient {h['coefficient']} chosen on the dev half.", "",
                  "| comparison | headline diff [95% CI] | p (Holm) | verdict |", "|---|---|---|---|"]
        for c in ("unsteered", "random_latent", "dense_direction", "system_prompt"):
            x = h["vs_" + c]
            lines.append(f"| latent - {c.replace('_', ' ')} | {_ci(x)} | {_f(x.get('p_holm'))} | {verdict(x)} |")
        lines += [""] + methods_section(s, summary.get("peers") or {})
    return "\n".join(lines)
