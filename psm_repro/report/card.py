"""Result cards for people: summary.md and the dose-response plot, rendered from saved numbers only."""

from __future__ import annotations

import io
import math
from pathlib import Path


def _f(x, digits=3) -> str:
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return str(x)


def _ci(d: dict, digits=3) -> str:
    return f"{_f(d['diff'], digits)} [{_f(d['ci_low'], digits)}, {_f(d['ci_high'], digits)}]"


def verdict(d: dict) -> str:
    """The card's word for one comparison: "beats", "no", or "judge not valid"."""
    v = d.get("verdict") or ("beats" if d["beats"] else "no")
    return "**beats**" if v == "beats" else v


def render_summary(summary: dict, rows: list[dict]) -> str:
    f = summary["finder"]
    if f.get("assistant_only"):
        from psm_repro.report.peers import render_assistant_only

        return render_assistant_only(summary, rows)
    lines = [f"# {summary['experiment']}: persona `{summary['persona']}`", "",
             f"Model `{summary['model']}`, SAE `{summary['sae']}` at `{summary['hook']}`, seed {summary['seed']}.", "",
             "## Finder", "",
             f"{f['latents_tested']} of {f['latents']} latents active on >= 3 items (trait and neutral pooled) in both sets were tested "
             f"({f['n_pairs']['narrative']} narrative pairs, {f['n_pairs']['assistant']} assistant pairs, "
             f"`{f['aggregation']}` over tokens). {f['significant_shared']} shared latents in the table pass BH-FDR.", "",
             *_ranking_note(f),
             "| rank | latent | shared score | narrative d | assistant d | q | replicates | also passes for | top tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows[:10]:
        lines.append(f"| {r['rank']} | {r['feature']} | {_f(r['score'])} | {_f(r['narrative_effect'])} | "
                     f"{_f(r['assistant_effect'])} | {_f(r['q_value'])} | {'yes' if r['replicates'] else 'no'} | "
                     f"{_elsewhere(r)} | {str(r['top_tokens']).replace('|', '/')} |")
    sp = summary.get("specificity")
    if sp:
        lines += ["", f"Specificity: each latent's shared score on the other personas' contrasts "
                      f"({', '.join(sp['others'])}); a latent significant on {sp['generic_personas']} or more of them "
                      f"is **generic**. Headline latent (best-ranked, not generic): **{sp['headline_feature']}**"
                      + (f"; generic in the top 10: {', '.join(map(str, sp['generic_in_top10']))}."
                         if sp["generic_in_top10"] else "; none of the top 10 is generic.")]
    d = f["dense_baseline"]
    lines += ["", "### Controls", "",
              f"- Shuffled labels: best shared score by chance {_f(f['shuffled_max_score_mean'])} on average, "
              f"95th percentile {_f(f['shuffled_max_score_p95'])} (top real score {_f(f['top_score'])}).",
              f"- Best narrative-only latent {f['best_narrative_only']['feature']}: narrative d "
              f"{_f(f['best_narrative_only']['narrative_effect'])}, assistant d "
              f"{_f(f['best_narrative_only']['assistant_effect'])}.",
              f"- Best assistant-only latent {f['best_assistant_only']['feature']}: narrative d "
              f"{_f(f['best_assistant_only']['narrative_effect'])}, assistant d "
              f"{_f(f['best_assistant_only']['assistant_effect'])}.",
              f"- Dense difference-of-means direction (held-out half): narrative d {_f(d['narrative_heldout_effect'])}, "
              f"assistant d {_f(d['assistant_heldout_effect'])}; narrative direction on assistant pairs "
              f"d {_f(d['narrative_direction_on_assistant_effect'])}; cosine(narrative, assistant) "
              f"{_f(d['cosine_narrative_vs_assistant'])}.",
              f"- Stability: {f['stability_top10_overlap']}/10 top latents shared between two halves of the pairs; "
              f"{f['replicating_in_top10']} of the top 10 replicate (top 50 in both halves).",
              f"- Reuse rate: {_f(f['reuse_rate'])} of the {f['assistant_significant']} latents significant on "
              f"assistant chats are also significant on narratives (shuffled-label expectation "
              f"{_f(f['reuse_rate_shuffled'])}).", ""]
    if summary.get("situation"):
        lines += situation_section(summary["situation"])
    if summary.get("streetlight"):
        lines += _meaning_section(summary["streetlight"], rows)
    if summary.get("ordinary"):
        lines += ordinary_section(summary["ordinary"])
    s = summary.get("steering")
    if s:
        h = s["headline"]
        v = s.get("judge_validity") or {}
        on = v.get("model", "smollm2_135m_it")
        if v.get("n", 0):
            judge_line = (f"Judge (`{s.get('judge', 'embedding')}`) validated on {v['n']} blind-labelled real replies "
                          f"of this persona written by {on}: headline AUROC {_f(v.get('auroc_headline'))}, trait AUROC "
                          f"{_f(v.get('auroc_trait'))}, coherence AUROC {_f(v.get('auroc_coherence'))}, agreement "
                          f"{_f(v.get('agreement'))} (docs/judge_validation.md).")
        else:
            judge_line = (f"**Judge not validated on {on}**: no blind-labelled replies of this model for this persona "
                          "(docs/judge_validation.md), so no comparison below can say \"beats\".")
        if v.get("transfer_from") and math.isfinite(v.get("transfer_auroc_headline", float("nan"))):
            judge_line += (f" Transfer, for comparison only: a judge fitted on {v['transfer_from']}'s labels alone "
                           f"scores {on}'s labelled replies at headline AUROC {_f(v.get('transfer_auroc_headline'))}.")
        if not s["judge_reliable"] and v.get("n", 0):
            judge_line += (" **Below 0.75 (or no labels): the judge is not valid for this persona, so no comparison "
                           "below can say \"beats\".**")
        samp = s.get("sampling", {})
        lines += ["## Steering", "",
                  f"Latent {s['feature']} injected with `{s['mode']}` at `{s['positions']}` positions; random control "
                  f"latent {s['random_feature']}. Steering vector norm at coefficient 1 = "
                  f"{_f(s['steering_vector_norm_ratio'])} x the mean residual norm. Sampling: temperature "
                  f"{samp.get('temperature')}, top-p {samp.get('top_p')}, {samp.get('max_new_tokens')} new tokens.", "",
                  judge_line, "",
                  "Headline score per reply = P(trait) x P(coherent): a reply counts only when it is coherent and "
                  f"shows the trait. Coefficient {h['coefficient']} chosen on the dev half by that score; on the test "
                  f"half ({_n(h)} prompts), per-prompt differences, 95% BCa interval, one-sided exact sign-flip "
                  "test, Holm-corrected over the four comparisons:", "",
                  "| comparison | headline diff [95% CI] | trait diff | coherence diff | p (Holm) | verdict |",
                  "|---|---|---|---|---|---|"]
        for c in ("unsteered", "random_latent", "dense_direction", "system_prompt"):
            d = h["vs_" + c]
            lines.append(f"| latent - {c.replace('_', ' ')} | {_ci(d)} | {_f(d.get('trait_diff'))} | "
                         f"{_f(d.get('coherence_diff'))} | {_f(d.get('p_holm'))} | {verdict(d)} |")
        st = h["steerability"]
        lines += ["", f"Steerability (mean per-prompt slope of the headline score per unit coefficient): "
                      f"{_f(st['slope'], 4)} [{_f(st['ci_low'], 4)}, {_f(st['ci_high'], 4)}].", "",
                  "Full dose-response (trait, coherence and headline side by side): `steering.csv`, "
                  "`dose_response.png`; replies with their three scores: `samples.jsonl`.", ""]
        from psm_repro.report.peers import methods_section

        lines += methods_section(s, summary.get("peers") or {})
    return "\n".join(lines)


def _ranking_note(f: dict) -> list[str]:
    if f.get("rank_by") != "narrative_situation":
        return []
    return [f"Ranked by `finder.rank_by=narrative_situation`: shared score = min(narrative d, situation d read at "
            f"`{f['ranked_on']}`); the assistant d column is the scripted-reply contrast, for comparison.", ""]


def _elsewhere(r: dict) -> str:
    if "generic" not in r:
        return "n/a"
    others = r.get("other_personas_passed") or ""
    names = ", ".join(others.split()) if others else "none"
    return f"**generic**: {names}" if r["generic"] else names


def _d_ci(r: dict, read: str) -> str:
    star = "*" if r[f"{read}_significant"] else ""
    return f"{_f(r[f'{read}_d'], 2)}{star} [{_f(r[f'{read}_ci_low'], 2)}, {_f(r[f'{read}_ci_high'], 2)}]"


def situation_section(sit: dict) -> list[str]:
    """The assistant in the situation (psm_repro/pipeline/situations.py): both read points for the top latents."""
    if sit.get("skipped"):
        return ["## The assistant in the situation", "", f"Not measured: {sit['skipped']}.", ""]
    rd = sit["reads"]
    lines = ["## The assistant in the situation", "",
             f"{sit['n_pairs']} matched situation / neutral user turns, no assistant text. Read at the prompt "
             f"(the item's own text and the generation header, before the model writes) and on the model's own replies ({sit['samples']} sampled per "
             f"prompt, {sit['max_new_tokens']} new tokens, temperature {sit['temperature']}, top-p {sit['top_p']}, "
             f"seed {sit['reply_seed']} + batch offset; replies in `situation_replies.jsonl`). Paired d over pairs, "
             "95% BCa interval; * = BH q < 0.05 among tested latents (sign-flip test). Shuffled-label control: the "
             f"best d by chance, 95th percentile, prompt {_f(rd['prompt']['shuffled_p95'], 2)}, reply "
             f"{_f(rd['reply']['shuffled_p95'], 2)}. Significant latents: prompt {rd['prompt']['significant']} of "
             f"{rd['prompt']['tested']} tested, reply {rd['reply']['significant']} of {rd['reply']['tested']}.", "",
             "| latent | group | scripted replies significant | situation d: prompt | situation d: reply | agree |",
             "|---|---|---|---|---|---|"]
    for r in sit["latents"]:
        lines.append(f"| {r['feature']} | {r['group']} | {'yes' if r['scripted_significant'] else 'no'} | "
                     f"{_d_ci(r, 'prompt')} | {_d_ci(r, 'reply')} | {'yes' if r['agree'] else '**no**'} |")
    shared = [r for r in sit["latents"] if r["group"].startswith("shared")]
    passing = [str(r["feature"]) for r in shared if r["situation_significant"]]
    lines += ["", f"Of the top {len(shared)} shared latents, {len(passing)} pass the situation test at either read "
                  f"point ({', '.join(passing) if passing else 'none'})."]
    if sit["disagree"]:
        lines.append(f"The scripted-reply contrast and the situation contrast **disagree** on latents "
                     f"{', '.join(map(str, sit['disagree']))}: a latent significant on scripted replies alone may "
                     "be reading the written words rather than the situation; one significant on the situation "
                     "alone responds to the situation without the trait's vocabulary.")
    return lines + [""]


PROXY_WORDS = {"lexicality": "lexicality", "log10_density": "log10 density",
               "context_consistency": "top-context consistency"}


def _meaning_section(sl: dict, rows: list[dict]) -> list[str]:
    """What the top latents fire on in the reference corpus, and the streetlight test."""
    lines = ["## What the top latents are", "",
             f"From a scan of {sl['reference_tokens']:,} reference-corpus tokens (dashboards: `dashboards/`, "
             "overview `dashboards.png`). Lexicality: share of a latent's top 100 corpus activations taken by its "
             "most common token.", "",
             "| rank | latent | density | lexicality (token) | promotes |", "|---|---|---|---|---|"]
    for r in rows[:10]:
        if r.get("density") is None:
            continue
        lines.append(f"| {r['rank']} | [{r['feature']}](dashboards/latent_{r['feature']}.md) | "
                     f"{float(r['density']):.2%} | {_f(r['lexicality'], 2)} (`{r['lexical_token']}`) | "
                     f"{str(r['promoted_tokens']).replace('|', '/')} |")
    lines += ["", "### Streetlight test", "",
              f"Latents significant on the assistant contrast: {sl['n_reused']} also significant on narratives "
              f"(reused), {sl['n_assistant_only']} not (assistant-only). Difference of group means (reused - "
              "assistant-only), 95% BCa interval over latents, and the shuffled-group control (p, null 95% range):",
              "", "| proxy | reused | assistant-only | difference [95% CI] | p shuffled | null 95% |",
              "|---|---|---|---|---|---|"]
    for name, c in sl["proxies"].items():
        lines.append(f"| {PROXY_WORDS.get(name, name)} | {_f(c['mean_a'])} (n={c['n_a']}) | {_f(c['mean_b'])} "
                     f"(n={c['n_b']}) | {_f(c['diff'])} [{_f(c['ci_low'])}, {_f(c['ci_high'])}] | "
                     f"{_f(c['p_shuffled'])} | [{_f(c['null_low'])}, {_f(c['null_high'])}] |")
    lines += ["", streetlight_verdict(sl), ""]
    return lines


def streetlight_verdict(sl: dict) -> str:
    """One plain sentence: which proxies separate the groups beyond the shuffled control, and in which direction."""
    said = []
    for name, c in sl["proxies"].items():
        p = c.get("p_shuffled")
        if p is None or p != p:
            said.append(f"{PROXY_WORDS.get(name, name)}: too few latents to test")
        elif p < 0.05:
            said.append(f"{PROXY_WORDS.get(name, name)} is {'higher' if c['diff'] > 0 else 'lower'} for reused latents "
                        f"(p={p:.3f})")
        else:
            said.append(f"{PROXY_WORDS.get(name, name)}: no difference beyond chance (p={p:.2f})")
    return "Verdict: " + "; ".join(said) + "."


def _v(d: dict, pct: bool = False) -> str:
    if d["value"] != d["value"]:
        return "n/a (no such tokens)"
    if pct:
        return f"{d['value']:.2%} [{d['ci_low']:.2%}, {d['ci_high']:.2%}]"
    return f"{_f(d['value'])} [{_f(d['ci_low'])}, {_f(d['ci_high'])}]"


def ordinary_section(o: dict) -> list[str]:
    """The narrative latents on ordinary chats vs the same content as prose (psm_repro/pipeline/ordinary.py)."""
    lines = ["## Its narrative latents in ordinary chats", ""]
    if o.get("skipped"):
        return lines + [f"Not measured: {o['skipped']}.", ""]
    g = o["groups"]
    lines += [f"The top {len(o['latents'])} latents of the narrative contrast ({', '.join(map(str, o['latents']))}) "
              f"read on {o['n_items']} ordinary chats on unrelated topics (`{o['file']}`) and on the same content "
              "written as prose; baseline: density-matched random latents "
              f"({', '.join(map(str, o['random_latents']))}). Share of (token, latent) pairs that fire, per item, "
              "mean and 95% BCa interval over items:", "",
              "| tokens | narrative latents | random latents |", "|---|---|---|"]
    for grp, words in (("markup", "template markup (special tokens, role names)"),
                       ("template_text", "text the template adds (default system prompt)"),
                       ("user", "user's words"), ("assistant", "assistant's words"), ("prose", "same content as prose")):
        lines.append(f"| {words} | {_v(g['ai'][grp]['rate'], True)} | {_v(g['random'][grp]['rate'], True)} |")
    lines += ["", "Paired differences against the prose (firing share; mean activation), and narrative minus random "
              "latents:", "", "| contrast | narrative latents | random latents | narrative - random |",
              "|---|---|---|---|"]
    for key, c in o["contrasts"].items():
        for metric in ("rate", "mean"):
            m = c[metric]
            pct = metric == "rate"
            lines.append(f"| {key.replace('_', ' ')} ({'share' if pct else 'mean'}) | {_v(m['ai'], pct)} | "
                         f"{_v(m['random'], pct)} | {_v(m['ai_minus_random'], pct)} |")
    a = o["contrasts"]["assistant_minus_prose"]["rate"]["ai_minus_random"]
    t = o["contrasts"]["markup_minus_prose"]["rate"]["ai_minus_random"]
    x = o["contrasts"]["template_text_minus_prose"]["rate"]["ai_minus_random"]
    lines += ["", f"Verdict (firing share, narrative minus random latents): on the assistant's own words the "
              f"narrative latents fire {_word(a)} than on the same content as prose; on the template's markup "
              f"{_word(t)}; on text the template adds {_word(x)}. Items where any of them fires on the assistant's words: "
              f"{o['items_with_any_firing']['assistant']:.0%} (prose: {o['items_with_any_firing']['prose']:.0%}).", ""]
    return lines


def _word(d: dict) -> str:
    if d["value"] != d["value"]:
        return "n/a (no such tokens)"
    if d["ci_low"] > 0:
        return "more"
    if d["ci_high"] < 0:
        return "less"
    return "no more or less (the interval spans 0)"


def _n(h: dict) -> str:
    return str(h.get("vs_unsteered", {}).get("n_prompts", "?"))


def plot_dose_response(table: list[dict], path: Path, title: str) -> None:
    """Headline score, trait and coherence against coefficient, and the trait-coherence Pareto view (test half)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from psm_repro.core.outputs import write_bytes

    rows = [r for r in table if r["split"] == "test"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colours = {"sae_latent": "C0", "random_latent": "C1", "dense_direction": "C2", "persona_vector": "C3",
               "caa_vector": "C4"}
    for method in sorted({r["method"] for r in rows}):
        pts = sorted([r for r in rows if r["method"] == method], key=lambda r: r["coefficient"])
        if method in ("unsteered", "system_prompt"):
            r = pts[0]
            style = dict(color="grey" if method == "unsteered" else "black",
                         ls="--" if method == "unsteered" else ":")
            axes[0].axhline(r["score"], label=method, **style)
            axes[1].axhline(r["trait_score"], lw=1, **style)
            axes[2].scatter([r["coherence_score"]], [r["trait_score"]], marker="s" if method == "unsteered" else "*",
                            s=60, color=style["color"], label=method, zorder=3)
            continue
        x = [r["coefficient"] for r in pts]
        col = colours.get(method)
        y = [r["score"] for r in pts]
        err = [[r["score"] - r["score_ci_low"] for r in pts], [r["score_ci_high"] - r["score"] for r in pts]]
        axes[0].errorbar(x, y, yerr=err, marker="o", capsize=3, label=method, color=col)
        axes[1].plot(x, [r["trait_score"] for r in pts], marker="o", color=col, label=f"{method} trait")
        axes[1].plot(x, [r["coherence_score"] for r in pts], marker="x", ls="--", color=col,
                     label=f"{method} coherence")
        axes[2].plot([r["coherence_score"] for r in pts], [r["trait_score"] for r in pts], marker="o", color=col,
                     label=method)
        for r in pts:
            axes[2].annotate(f"{r['coefficient']:g}", (r["coherence_score"], r["trait_score"]), fontsize=7)
    axes[0].set(xlabel="coefficient (x max activation)", ylabel="P(trait) x P(coherent)",
                title=f"{title}: headline score (95% BCa)")
    axes[1].set(xlabel="coefficient (x max activation)", ylabel="judge probability",
                title="trait (solid) and coherence (dashed)")
    axes[2].set(xlabel="P(coherent)", ylabel="P(trait)", title="Pareto view (labels: coefficient)",
                xlim=(-0.02, 1.02))
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=6, ncol=2)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue())
