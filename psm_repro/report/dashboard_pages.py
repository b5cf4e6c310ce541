"""Dashboard pages: one HTML page and one Markdown page per latent, an index, and one overview PNG per run."""

from __future__ import annotations

import html
import io
import math
from pathlib import Path

from psm_repro.core.outputs import write_bytes, write_text
from psm_repro.report.dashboards import Dashboard, hist_bins

SET_LABELS = {"narrative": "narrative trait", "narrative_neutral": "narrative neutral",
              "assistant": "assistant trait", "assistant_neutral": "assistant neutral"}


def _g(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _set_stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    fired = sum(v > 0 for v in values) / len(values)
    return f"mean {_g(sum(values) / len(values))}, fires on {fired:.0%} of {len(values)} items"


def markdown(d: Dashboard, persona: str = "") -> str:
    """The page in plain text: top contexts with the peak token in [[ ]], stats, logit effects, persona sets."""
    q = d.quantiles
    lines = [f"# Latent {d.feature}", "",
             f"- Density: fires on {d.density:.3%} of reference tokens.",
             f"- Lexicality: {_g(d.lexicality)} of its top {d.n_top} activations are the token `{d.lexical_token}`.",
             f"- Positive activations: p50 {_g(q['p50'])}, p90 {_g(q['p90'])}, p99 {_g(q['p99'])}, max {_g(q['max'])}."]
    if d.neuronpedia_url:
        lines.append(f"- Neuronpedia: {d.neuronpedia_url}")
    lines += ["", "## Top contexts (reference corpus)", ""]
    for c in d.contexts:
        toks = [f"[[{t}]]" if i == c.peak else t for i, t in enumerate(c.tokens)]
        others = sorted(((a, t) for i, (a, t) in enumerate(zip(c.acts, c.tokens)) if a > 0 and i != c.peak),
                        reverse=True)[:3]
        also = "; also " + ", ".join(f"`{t}` {a:.2f}" for a, t in others) if others else ""
        lines.append(f"- ({c.value:.2f}) ..." + "".join(toks).replace("\n", " ") + f"...{also}")
    lines += ["", "## Tokens it promotes / suppresses (decoder direction through the unembedding)", "",
              "promotes: " + ", ".join(f"`{t}` {v:+.2f}" for t, v in d.promoted),
              "", "suppresses: " + ", ".join(f"`{t}` {v:+.2f}" for t, v in d.suppressed), ""]
    if d.sets:
        lines += [f"## On the persona's items{f' ({persona})' if persona else ''} (max over each item's tokens)", ""]
        lines += [f"- {SET_LABELS.get(s, s)}: {_set_stats(v)}" for s, v in d.sets.items()]
        lines.append("")
    return "\n".join(lines)


def _bar(width_frac: float, colour: str) -> str:
    return (f'<span style="display:inline-block;height:10px;width:{max(width_frac, 0) * 160:.1f}px;'
            f'background:{colour}"></span>')


def page(d: Dashboard, persona: str = "") -> str:
    """The page as self-contained HTML (no scripts): tokens shaded by activation, value on hover."""
    e = html.escape
    q = d.quantiles
    top = max((c.value for c in d.contexts), default=0.0) or 1.0
    rows = []
    for c in d.contexts:
        spans = []
        for i, (t, a) in enumerate(zip(c.tokens, c.acts)):
            alpha = min(max(a / top, 0.0), 1.0)
            border = "border-bottom:2px solid #c00;" if i == c.peak else ""
            spans.append(f'<span title="{a:.3f}" style="background:rgba(255,120,0,{alpha:.2f});{border}">'
                         f"{e(t)}</span>")
        rows.append(f"<tr><td class=v>{c.value:.2f}</td><td class=ctx>{''.join(spans)}</td></tr>")
    hist = d.hist
    peak = max(hist) or 1
    hrows = [f"<tr><td class=v>{lo:.3g}-{hi:.3g}</td><td>{_bar(n / peak, '#4a7')}</td><td class=v>{n}</td></tr>"
             for (lo, hi), n in zip(hist_bins(), hist) if n]
    big = max(abs(v) for _, v in d.promoted + d.suppressed) or 1.0
    logit_rows = "".join(f"<tr><td>{e(t)}</td><td>{_bar(abs(v) / big, '#36c')}</td><td class=v>{v:+.2f}</td></tr>"
                         for t, v in d.promoted)
    logit_rows += "".join(f"<tr><td>{e(t)}</td><td>{_bar(abs(v) / big, '#c33')}</td><td class=v>{v:+.2f}</td></tr>"
                          for t, v in d.suppressed)
    set_rows = "".join(f"<tr><td>{e(SET_LABELS.get(s, s))}</td><td>{e(_set_stats(v))}</td></tr>"
                       for s, v in d.sets.items())
    link = f'<p><a href="{e(d.neuronpedia_url)}">Neuronpedia</a></p>' if d.neuronpedia_url else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Latent {d.feature}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:1em auto}} td{{padding:2px 6px;vertical-align:top}}
td.v{{text-align:right;font-family:monospace;white-space:nowrap}} td.ctx{{font-family:monospace;white-space:pre-wrap}}
h2{{font-size:1.1em;margin-top:1.4em}}</style></head><body>
<h1>Latent {d.feature}</h1>
<p>Fires on <b>{d.density:.3%}</b> of reference tokens. Lexicality <b>{_g(d.lexicality)}</b>: share of its top
{d.n_top} activations on the token <code>{e(d.lexical_token)}</code>. Positive activations: p50 {_g(q['p50'])},
p90 {_g(q['p90'])}, p99 {_g(q['p99'])}, max {_g(q['max'])}.</p>{link}
<h2>Top contexts (reference corpus; shade = activation, underline = peak)</h2><table>{''.join(rows)}</table>
<h2>Activation histogram (positive values)</h2><table>{''.join(hrows)}</table>
<h2>Tokens promoted (blue) and suppressed (red) by its decoder direction</h2><table>{logit_rows}</table>
{f'<h2>On the persona items ({e(persona)})</h2><table>{set_rows}</table>' if d.sets else ''}
</body></html>
"""


def write_pages(boards: list[Dashboard], out_dir: Path, persona: str = "") -> None:
    """dashboards/latent_<id>.html and .md for every board, plus dashboards/index.html."""
    items = []
    for d in boards:
        write_text(out_dir / f"latent_{d.feature}.html", page(d, persona))
        write_text(out_dir / f"latent_{d.feature}.md", markdown(d, persona))
        items.append(f'<li><a href="latent_{d.feature}.html">latent {d.feature}</a>: density {d.density:.3%}, '
                     f"lexicality {_g(d.lexicality)} (<code>{html.escape(d.lexical_token)}</code>)</li>")
    write_text(out_dir / "index.html", "<!doctype html><html><head><meta charset='utf-8'><title>Dashboards</title>"
               "</head><body style='font-family:sans-serif'><h1>Feature dashboards</h1><ul>"
               + "".join(items) + "</ul></body></html>\n")


def _plain(text: str) -> str:
    """The page's token marks in glyphs every matplotlib font has."""
    return text.replace("⏎", "\\n").replace("␣", " ").replace("∅", "")


def plot_overview(boards: list[Dashboard], path: Path, title: str) -> None:
    """One PNG: per latent, its top contexts (peak token in brackets) and trait-vs-neutral item activations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(boards)
    fig, axes = plt.subplots(n, 2, figsize=(15, 1.55 * n + 0.6), gridspec_kw={"width_ratios": [3.2, 1]},
                             squeeze=False)
    for row, d in zip(axes, boards):
        ax = row[0]
        ax.axis("off")
        ax.text(0, 0.98, _plain(f"latent {d.feature}  density {d.density:.2%}  lexicality {_g(d.lexicality)} "
                f"('{d.lexical_token}')  promotes: {', '.join(t for t, _ in d.promoted[:4])}"),
                fontsize=8.5, weight="bold", va="top", transform=ax.transAxes)
        for i, c in enumerate(d.contexts[:3]):
            left = _plain("".join(c.tokens[max(0, c.peak - 9):c.peak]))
            right = _plain("".join(c.tokens[c.peak + 1:c.peak + 4]))
            text = f"({c.value:.1f}) ...{left}[{_plain(c.tokens[c.peak])}]{right}..."
            ax.text(0, 0.72 - 0.24 * i, text[:120], fontsize=8, family="monospace", va="top",
                    transform=ax.transAxes)
        ax2 = row[1]
        labels = [s for s in ("narrative", "narrative_neutral", "assistant", "assistant_neutral") if s in d.sets]
        if labels:
            ax2.boxplot([d.sets[s] for s in labels], orientation="horizontal", widths=0.6, showfliers=True,
                        flierprops={"markersize": 2})
            ax2.set_yticks(range(1, len(labels) + 1), [SET_LABELS[s] for s in labels], fontsize=7)
            ax2.invert_yaxis()  # narrative trait on top, as in the pages
            ax2.tick_params(axis="x", labelsize=7)
        else:
            ax2.axis("off")
    axes[0][1].set_title("persona items: max activation", fontsize=8)
    fig.suptitle(f"{title}: top latents (contexts from the reference corpus)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue())
