"""The `posttrain` card (summary.md), from summary.json and, once read, the blind labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

from psm_repro.core.outputs import write_text
from psm_repro.posttraining import reading


def _ci(d: dict, key: str = "diff", signed: bool = True) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    v, lo, hi = d[key], d["ci_low"], d["ci_high"]
    if not math.isfinite(v):
        return "n/a"
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def _answer_reading(read: dict | None) -> str:
    if read is None:
        return ("**Not read yet.** The replies are in `reading/sheet.jsonl` (blind: id, user turn, reply; the key "
                "is `reading/key.jsonl`). A reader who opens only the sheet and `reading/RUBRIC.md` writes "
                "`reading/labels.jsonl`; `python -m psm_repro tables` then fills this section.")
    d = read["differences"].get("posttrained - base")
    c = read["differences"].get("posttrained - control")
    if d is None or c is None:
        return "The labels do not cover all three models."
    made = d["ci_low"] > 0 and c["ci_low"] > 0
    return (f"**{'Yes' if made else 'No'}**: post-trained - base {_ci(d)}, post-trained - control {_ci(c)} "
            "(share of replies read as assistant answers; it counts as made when both intervals exclude 0).")


def render_card(s: dict, read: dict | None) -> str:
    c, t = s["config"], s["training"]
    post, ctrl = t["posttrained"], t["control"]
    lines = [f"# Post-training on {s['model']}, read through {s['sae']}", "",
             f"SFT: LoRA r={c['lora_rank']} on {post['examples']} assistant chats of `{c['chats_corpus']}` (training "
             f"split, in {s['model']}'s chat format, loss on the assistant turn), {post['steps']} steps, "
             f"{post['tokens']:,} tokens ({post['loss_tokens']:,} with a loss), {post['seconds']:.0f} s. Control: the "
             f"same steps, batch shapes and token count on narrative windows of the same corpus ({ctrl['tokens']:,} "
             f"tokens, {ctrl['loss_tokens']:,} with a loss), {ctrl['seconds']:.0f} s. Final loss (mean of the last "
             f"10 steps): SFT {s['final_loss']['posttrained']:.3f}, control {s['final_loss']['control']:.3f} "
             "(`loss.csv`, `loss.png`). Device: " + s["device"] + ".", "",
             "## Did post-training make an assistant? (blind reading)", "",
             f"Each model's greedy reply to the same {s['reading']['items']} ordinary user turns "
             f"(`{c['ordinary']}`), shuffled into one blind sheet of {s['reading']['rows']} replies.", ""]
    if read is not None:
        lines += [f"Read by {', '.join(read['labellers'])} (rubric: `reading/RUBRIC.md`). Share read as an "
                  "assistant's answer, 95% BCa interval over items:", "", "| model | share | n |", "|---|---|---|"]
        for m, r in read["models"].items():
            lines.append(f"| {m} | {_ci(r, 'share', signed=False)} | {r['n']} |")
        lines += ["", "| difference (paired by item) | share |", "|---|---|"]
        for k, d in read["differences"].items():
            lines.append(f"| {k} | {_ci(d)} |")
        lines.append("")
    lines += [_answer_reading(read), "", "## Does the base SAE still read the post-trained model?", "",
              f"The base SAE at `{s['hook']}` on {c['heldout_sequences']} held-out sequences of {c['context_size']} "
              f"tokens per slice of `{c['eval_corpus']}`, spliced into each model (Kissane et al.'s transfer test).",
              "", "| model | slice | FVU | CE loss recovered | L0 | CE clean / with SAE |", "|---|---|---|---|---|---|"]
    for r in s["transfer"]:
        lines.append(f"| {r['model']} | {r['slice']} | {r['fvu']:.3f} | {r['ce_loss_recovered']:.1%} | {r['l0']:.1f} | "
                     f"{r['ce_clean']:.3f} / {r['ce_with_sae']:.3f} |")
    dif = s["diff"]
    sh = dif["shares"]
    lines += ["", "## Which latents did post-training raise?", "",
              f"Mean base-SAE latent over the last assistant turn of {dif['n_turns']} fixed chats (held-out chats "
              "first), read by each model. Ranked by (post-trained - base) - (control - base) on a seeded half of the "
              "turns; p is a one-sided sign-flip test on the other half, q its BH correction over the "
              f"{c['diff_top_n']} top latents: {dif['significant_risers']} have q < 0.05. A latent is a *narrative "
              "persona latent* when a shipped persona's narrative contrast (`find` on the base model) calls it "
              "significant; each riser is paired with the latent closest in firing frequency (on these turns) and "
              "decoder norm.", "",
              "| rank | latent | rise vs control | rise vs base | d_z | p | q | narrative personas |",
              "|---|---|---|---|---|---|---|---|"]
    for r in dif["top"]:
        lines.append(f"| {r['rank']} | {r['feature']} | {r['rise_vs_control']:.4f} | {r['rise_vs_base']:.4f} | "
                     f"{r['effect']:.2f} | {r['p']:.4f} | {r['q']:.3f} | {r['narrative_personas'] or '-'} |")
    lines += ["", "| top risers | n | share that are narrative persona latents | matched random latents | "
              "difference [95% BCa] |", "|---|---|---|---|---|"]
    names = {"any_persona": f"top {c['diff_top_n']}, any persona", "ai_entity": f"top {c['diff_top_n']}, AI entity",
             "any_persona_significant_risers": "q < 0.05, any persona"}
    for k, v in sh.items():
        lines.append(f"| {names.get(k, k)} | {v['n']} | {v['share']:.2f} | {v['random_share']:.2f} | {_ci(v)} |")
    narr = ", ".join(f"{n} {k}" for n, k in s["narrative_significant"].items())
    lines += ["", f"Narrative-significant latents per persona in the base model: {narr}.", "",
              "## Not measured yet", "",
              "Reused vs new latents (an SAE trained on the post-trained model, matched by decoder cosine against a "
              "null) and the persona claims (finder, steering) on the post-trained model are the next steps of the "
              "chain; no number here speaks to them.", "",
              "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["stage_seconds"].items())
              + f"; total {s['seconds']:.0f} s. Files: loss.csv, loss.png, transfer.csv, diff.csv, samples.jsonl "
              "(every reply with its model: not for the reader), reading/, manifest.json."]
    return "\n".join(lines) + "\n"


def rerender(run_dir: Path) -> str:
    """summary.md again from summary.json and the blind labels (reading/labels.jsonl) when they are there."""
    summary = json.loads((run_dir / "summary.json").read_text())
    read = reading.summarise(run_dir / "reading", summary["config"]["n_bootstrap"], summary["seed"])
    md = render_card(summary, read)
    write_text(run_dir / "summary.md", md)
    return md


def rerender_all(results_dir: Path) -> list[Path]:
    """Re-render every posttrain card under `results_dir` (the `tables` command)."""
    from psm_repro.report.posttraining import is_posttrain

    done = []
    for path in sorted(Path(results_dir).glob("**/summary.json")):
        if is_posttrain(json.loads(path.read_text())):
            rerender(path.parent)
            done.append(path.parent)
    return done

