"""Result cards for people: summary.md and the dose-response plot, rendered from saved numbers only."""

from __future__ import annotations

from pathlib import Path

import io


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
    lines = [f"# {summary['experiment']}: persona `{summary['persona']}`", "",
             f"Model `{summary['model']}`, SAE `{summary['sae']}` at `{summary['hook']}`, seed {summary['seed']}.", "",
             "## Finder", "",
             f"{f['latents_tested']} of {f['latents']} latents active on >= 3 items (trait and neutral pooled) in both sets were tested "
             f"({f['n_pairs']['narrative']} narrative pairs, {f['n_pairs']['assistant']} assistant pairs, "
             f"`{f['aggregation']}` over tokens). {f['significant_shared']} shared latents in the table pass BH-FDR.", "",
             "| rank | latent | shared score | narrative d | assistant d | q | replicates | top tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows[:10]:
        lines.append(f"| {r['rank']} | {r['feature']} | {_f(r['score'])} | {_f(r['narrative_effect'])} | "
                     f"{_f(r['assistant_effect'])} | {_f(r['q_value'])} | {'yes' if r['replicates'] else 'no'} | "
                     f"{str(r['top_tokens']).replace('|', '/')} |")
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
    s = summary.get("steering")
    if s:
        h = s["headline"]
        v = s.get("judge_validity") or {}
        judge_line = (f"Judge (`{s.get('judge', 'embedding')}`) validated on {v.get('n', 0)} blind-labelled real replies "
                      f"of this persona: headline AUROC {_f(v.get('auroc_headline'))}, trait AUROC "
                      f"{_f(v.get('auroc_trait'))}, coherence AUROC {_f(v.get('auroc_coherence'))}, agreement "
                      f"{_f(v.get('agreement'))} (docs/judge_validation.md).")
        if not s["judge_reliable"]:
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
    return "\n".join(lines)


def _n(h: dict) -> str:
    return str(h.get("vs_unsteered", {}).get("n_prompts", "?"))


def plot_dose_response(table: list[dict], path: Path, title: str) -> None:
    """Headline score, trait and coherence against coefficient, and the trait-coherence Pareto view (test half)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from psm_repro.outputs import write_bytes

    rows = [r for r in table if r["split"] == "test"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colours = {"sae_latent": "C0", "random_latent": "C1", "dense_direction": "C2"}
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
