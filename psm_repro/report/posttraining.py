"""The post-training section of `tables`: one row per `posttrain` card, with its blind reading once labelled."""

from __future__ import annotations

from pathlib import Path

from psm_repro.report.card import _f


def is_posttrain(summary: dict) -> bool:
    return "transfer" in summary and "training" in summary


def _ci(d: dict, key: str = "diff") -> str:
    return f"{_f(d[key], 2)} [{_f(d['ci_low'], 2)}, {_f(d['ci_high'], 2)}]"


def posttrain_section(runs: list[tuple[str, dict]], results_dir: Path) -> list[str]:
    from psm_repro.posttraining.reading import summarise

    runs = [(n, s) for n, s in runs if is_posttrain(s)]
    if not runs:
        return []
    lines = ["", "## Post-training", "",
             "Base model vs its LoRA SFT on assistant chats (post-trained) vs the same steps and tokens on narrative "
             "text (control), read through the base model's SAE. Reading: share of replies to ordinary user turns "
             "a blind reader calls a coherent on-topic assistant answer (answer) or written as the assistant "
             "(voice), post-trained minus base and minus control (95% BCa). "
             "Transfer: the base SAE's FVU on held-out chats, base / post-trained / control. Risers: latents that "
             "rise more from base to post-trained than to control (q < 0.05 on the held-out half, of the top n), "
             "and the share of the top n that are narrative persona latents minus matched random latents. "
             "Reused: share of the post-trained model's own SAE's live latents matched (decoder cosine above a "
             "rotation null) by a base SAE latent (Wilson 95%), beside the same share between two seeds of the base "
             "SAE (the ceiling SAE noise allows); lexicality, reused - new (95% BCa).", "",
             "| run | model / SAE | reading: post - base / post - control | FVU chats: base / post / control | "
             "risers (q < 0.05) | narrative persona share - random | reused: post-trained SAE / base seed | "
             "lexicality reused - new |", "|---|---|---|---|---|---|---|---|"]
    for name, s in runs:
        read = summarise(results_dir / name / "reading", s["config"]["n_bootstrap"], s["seed"])
        if read is None:
            cell = "not read yet"
        else:
            a, v = read["answer"]["differences"], read["voice"]["differences"]
            cell = (f"answer {_ci(a['posttrained - base'])} / {_ci(a['posttrained - control'])}; voice "
                    f"{_ci(v['posttrained - base'])} / {_ci(v['posttrained - control'])}")
        fvu = {r["model"]: r["fvu"] for r in s["transfer"] if r["slice"] == "chats"}
        share = s["diff"]["shares"]["any_persona"]
        lines.append(f"| [{name}]({name}/summary.md) | {s['model']} / {s['sae']} | {cell} | "
                     f"{' / '.join(_f(fvu.get(m, float('nan')), 3) for m in ('base', 'posttrained', 'control'))} | "
                     f"{s['diff']['significant_risers']} of {s['config']['diff_top_n']} | {_ci(share)} | "
                     f"{_reuse_cells(s.get('reuse'))} |")
    return lines


def _share(r: dict | None) -> str:
    if r is None:
        return "-"
    u = r["reused"]
    return f"{_f(u['share'], 3)} [{_f(u['ci_low'], 3)}, {_f(u['ci_high'], 3)}]"


def _reuse_cells(reuse: dict | None) -> str:
    """'post / seed | lexicality difference' for the reused-vs-new stage; '- | -' when it did not run."""
    if reuse is None:
        return "not run | -"
    lex = reuse["posttrained"]["streetlight"]["proxies"]["lexicality"]
    return f"{_share(reuse['posttrained'])} / {_share(reuse.get('base_seed'))} | {_ci(lex)}"
