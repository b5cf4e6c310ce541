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
    return "yes (interval above 0)" if d["beats"] else "no (interval includes or is below 0)"


def render_summary(summary: dict, rows: list[dict]) -> str:
    f = summary["finder"]
    lines = [f"# {summary['experiment']}: persona `{summary['persona']}`", "",
             f"Model `{summary['model']}`, SAE `{summary['sae']}` at `{summary['hook']}`, seed {summary['seed']}.", "",
             "## Finder", "",
             f"{f['latents_tested']} of {f['latents']} latents active on >= 3 trait items in both sets were tested "
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
        lines += ["## Steering", "",
                  f"Latent {s['feature']} injected with `{s['mode']}` at `{s['positions']}` positions; random control "
                  f"latent {s['random_feature']}. Steering vector norm at coefficient 1 = "
                  f"{_f(s['steering_vector_norm_ratio'])} x the mean residual norm. Judge held-out AUROC "
                  f"{_f(s['judge_auroc'])}" + ("" if s["judge_reliable"] else " (**below 0.8: judge unreliable**)") + ".",
                  "",
                  f"Coefficient {h['coefficient']} chosen on the dev half of the eval prompts; on the test half "
                  f"(difference in judge P(trait), 95% bootstrap interval over prompts):", "",
                  "| comparison | difference | latent better? |", "|---|---|---|"]
        for c in ("unsteered", "random_latent", "dense_direction", "system_prompt"):
            lines.append(f"| latent - {c.replace('_', ' ')} | {_ci(h['vs_' + c])} | {verdict(h['vs_' + c])} |")
        st = h["steerability"]
        lines += ["", f"Steerability (slope of P(trait) per unit coefficient): {_f(st['slope'], 4)} "
                      f"[{_f(st['ci_low'], 4)}, {_f(st['ci_high'], 4)}].", "",
                  "Full dose-response: `steering.csv`, `dose_response.png`; replies: `samples.jsonl`.", ""]
    return "\n".join(lines)


def plot_dose_response(table: list[dict], path: Path, title: str) -> None:
    """Trait score and coherence against coefficient, every method on one figure (test half)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from psm_repro.outputs import write_bytes

    rows = [r for r in table if r["split"] == "test"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method in sorted({r["method"] for r in rows}):
        pts = sorted([r for r in rows if r["method"] == method], key=lambda r: r["coefficient"])
        if method in ("unsteered", "system_prompt"):
            r = pts[0]
            axes[0].axhline(r["trait_score"], ls="--" if method == "unsteered" else ":", color="grey" if
                            method == "unsteered" else "black", label=method)
            axes[1].axhline(r["coherence"], ls="--" if method == "unsteered" else ":", color="grey" if
                            method == "unsteered" else "black", label=method)
            axes[2].scatter([r["coherence"]], [r["trait_score"]], marker="s" if method == "unsteered" else "*",
                            color="grey" if method == "unsteered" else "black", label=method, zorder=3)
            continue
        x = [r["coefficient"] for r in pts]
        y = [r["trait_score"] for r in pts]
        err = [[r["trait_score"] - r["trait_ci_low"] for r in pts], [r["trait_ci_high"] - r["trait_score"] for r in pts]]
        axes[0].errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
        axes[1].plot(x, [r["coherence"] for r in pts], marker="o", label=method)
        axes[2].plot([r["coherence"] for r in pts], y, marker="o", label=method)
        for r in pts:
            axes[2].annotate(f"{r['coefficient']:g}", (r["coherence"], r["trait_score"]), fontsize=7)
    axes[0].set(xlabel="coefficient (x max activation)", ylabel="judge P(trait)", title=f"{title}: trait score")
    axes[1].set(xlabel="coefficient (x max activation)", ylabel="mean log-prob under unsteered model",
                title="coherence")
    axes[2].set(xlabel="coherence (mean log-prob)", ylabel="judge P(trait)",
                title="trade-off (labels: coefficient)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue())
