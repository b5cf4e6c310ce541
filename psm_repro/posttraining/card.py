"""The `posttrain` card (summary.md), from summary.json and, once read, the blind labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

from psm_repro.core.outputs import write_text
from psm_repro.posttraining import reading


MODELS = ("base", "posttrained", "control")
STAGES = ("load and data", "train posttrained", "train control", "replies", "SAE transfer", "model diff",
          "narrative persona latents", "reused vs new")


def _model_rank(name: str) -> int:
    return MODELS.index(name) if name in MODELS else len(MODELS)


def _stage(name: str, seconds: float, training: dict) -> str:
    """A stage's time; a training arm that took less than its own training log was loaded from its checkpoint."""
    arm = name.removeprefix("train ")
    if arm in training and seconds < training[arm]["seconds"] / 2:
        return f"{name} {seconds:.0f} (loaded from its finished checkpoint; trained in {training[arm]['seconds']:.0f})"
    return f"{name} {seconds:.0f}"


def _ci(d: dict, key: str = "diff", signed: bool = True) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    v, lo, hi = d[key], d["ci_low"], d["ci_high"]
    if not math.isfinite(v):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{f.format(v)} [n/a: a group under 3]"
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def _answer_reading(read: dict | None) -> str:
    if read is None:
        return ("**Not read yet.** The replies are in `reading/sheet.jsonl` (blind: id, user turn, reply; the key "
                "is `reading/key.jsonl`). A reader who opens only the sheet and `reading/RUBRIC.md` writes "
                "`reading/labels.jsonl`; `python -m psm_repro tables` then fills this section.")
    out = []
    for name, what in (("answer", "gives coherent, on-topic assistant answers"), ("voice", "speaks as the assistant")):
        d = read[name]["differences"].get("posttrained - base")
        c = read[name]["differences"].get("posttrained - control")
        if d is None or c is None:
            return "The labels do not cover all three models."
        made = d["ci_low"] > 0 and c["ci_low"] > 0
        out.append(f"Post-trained model {what} more than base and control: **{'yes' if made else 'no'}** "
                   f"(post-trained - base {_ci(d)}, post-trained - control {_ci(c)}; yes when both intervals "
                   "exclude 0).")
    return " ".join(out)


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
        lines += [f"Read blind by {', '.join(read['labellers'])} (rubric: `reading/RUBRIC.md`): `answer` = a "
                  "coherent, on-topic answer given as the user's assistant; `voice` = written as the user's "
                  "assistant, whatever its quality. Shares with 95% BCa intervals over items; differences paired "
                  "by item.", "", "| model | answer | voice | n |", "|---|---|---|---|"]
        for m, r in sorted(read["answer"]["models"].items(), key=lambda kv: _model_rank(kv[0])):
            lines.append(f"| {m} | {_ci(r, 'share', signed=False)} | "
                         f"{_ci(read['voice']['models'][m], 'share', signed=False)} | {r['n']} |")
        lines += ["", "| difference | answer | voice |", "|---|---|---|"]
        for k, d in read["answer"]["differences"].items():
            lines.append(f"| {k} | {_ci(d)} | {_ci(read['voice']['differences'][k])} |")
        sr = read.get("second_reader")
        if sr:
            lines += ["", f"A second blind reader ({', '.join(sr['labellers'])}) labelled the same "
                      f"{sr['answer']['n']} replies: agreement {sr['answer']['agreement']:.2f} (Cohen's kappa "
                      f"{sr['answer']['kappa']:.2f}) on answer, {sr['voice']['agreement']:.2f} (kappa "
                      f"{sr['voice']['kappa']:.2f}) on voice."]
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
              "first), read by each model (the same text: only the model differs). A riser must rise from base to "
              "post-trained *and* above the control: ranked by min(post - base, post - control) on a seeded half of "
              "the turns; p is the larger of the two one-sided sign-flip tests on the other half, q its BH "
              f"correction over the {c['diff_top_n']} top latents: {dif['significant_risers']} have q < 0.05. A latent is a *narrative "
              "persona latent* when a shipped persona's narrative contrast (`find` on the base model) calls it "
              "significant; each riser is paired with the latent closest in firing frequency (on these turns) and "
              "decoder norm.", "",
              "Where it fires: the token at which the latent peaks in the post-trained model, in the 3 turns it is "
              "most active on, and the first of them in context.", "",
              "| rank | latent | rise vs control | rise vs base | d_z | p | q | narrative personas | where it fires |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in dif["top"]:
        where = (f"{r['peak_tokens']}: `{r['peak_context']}`".replace("|", "/") if r.get("peak_tokens") else "-")
        lines.append(f"| {r['rank']} | {r['feature']} | {r['rise_vs_control']:.4f} | {r['rise_vs_base']:.4f} | "
                     f"{r['effect']:.2f} | {r['p']:.4f} | {r['q']:.3f} | {r['narrative_personas'] or '-'} | {where} |")
    lines += ["", "| top risers | n | share that are narrative persona latents | matched random latents | "
              "difference [95% BCa] |", "|---|---|---|---|---|"]
    names = {"any_persona": f"top {c['diff_top_n']}, any persona", "ai_entity": f"top {c['diff_top_n']}, AI entity",
             "any_persona_significant_risers": "q < 0.05, any persona"}
    for k, v in sorted(sh.items(), key=lambda kv: list(names).index(kv[0]) if kv[0] in names else 99):
        lines.append(f"| {names.get(k, k)} | {v['n']} | {v['share']:.2f} | {v['random_share']:.2f} | {_ci(v)} |")
    narr = ", ".join(f"{n} {k}" for n, k in s["narrative_significant"].items())
    lines += ["", f"Narrative-significant latents per persona in the base model: {narr}.", ""]
    lines += reuse_section(s.get("reuse"), c)
    lines += ["## Not measured yet", "",
              "The persona claims (finder, steering) on the post-trained model: run the persona cards with "
              "`model=gemma3_270m_posttrained sae=gemma3_270m_posttrained_l12_topk`; no number here speaks to them.",
              "",
              "Stage times (s): " + ", ".join(_stage(k, v, t) for k, v in sorted(
                  s["stage_seconds"].items(), key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else 99))
              + f"; total {s['seconds']:.0f} s. Files: loss.csv, loss.png, transfer.csv, diff.csv, samples.jsonl "
              "(every reply with its model: not for the reader), reading/, reuse.csv, manifest.json."]
    return "\n".join(lines) + "\n"


PROXY_NAMES = {"lexicality": "lexicality (share of top activations on one token)",
               "log10_density": "log10 density on the reference corpus",
               "context_consistency": "top-context consistency (MiniLM cosine)"}


def reuse_section(r: dict | None, c: dict) -> list[str]:
    """Reused vs new latents of the post-trained model's own SAE, the seed ceiling, and the streetlight test."""
    lines = ["## What share of latents is reused, and are reused latents more interpretable?", ""]
    if r is None:
        return lines + ["Not run: no SAE trained on the post-trained model (`posttrain.posttrained_sae`; make it with "
                        "`python -m psm_repro train-sae experiment=sae_gemma3_270m_posttrained`).", ""]
    post = r["posttrained"]
    lines += [f"An SAE of the base SAE's shape trained on the post-trained model (`{post['sae']}`) is matched to the "
              f"base SAE (`{r['base_sae']}`) by decoder cosine: a live latent (fires on the "
              f"{post['tokens_scanned']:,}-token reference corpus) is *reused* when some base latent's decoder is "
              f"within cosine {post['threshold']:.3f}, *new* otherwise. The threshold is the {post['null_quantile']:.0%} "
              f"quantile of the best cosine of the post-trained decoders turned by {post['n_rotations'] // 2} "
              "Haar-random rotations of the residual stream; on the other "
              f"{post['n_rotations'] - post['n_rotations'] // 2} rotations it matches "
              f"{post['false_match_rate']:.2%} of latents (the null's median best cosine is "
              f"{post['null_best_cos_median']:.3f}). Shares: Wilson 95% intervals over live latents.", "",
              "| SAE | model it reads | live latents | dead | reused | threshold | false matches (null) |",
              "|---|---|---|---|---|---|---|"]
    for key in ("posttrained", "base_seed"):
        if key in r:
            x = r[key]
            u = x["reused"]
            lines.append(f"| {x['sae']} | {'post-trained' if key == 'posttrained' else 'base'} | {u['n']} | "
                         f"{x['n_dead']} | {u['share']:.3f} [{u['ci_low']:.3f}, {u['ci_high']:.3f}] ({u['k']}) | "
                         f"{x['threshold']:.3f} | {x['false_match_rate']:.2%} |")
    lines.append("")
    if "base_seed" in r:
        gap = r["base_seed"]["reused"]["share"] - post["reused"]["share"]
        lines += [f"The second row is the ceiling: a second seed of the base SAE, on the base model, matched the same "
                  f"way. Two SAEs of one model leave {1 - r['base_seed']['reused']['share']:.1%} of latents "
                  f"unmatched by training noise alone; post-training leaves {1 - post['reused']['share']:.1%} "
                  f"(gap {gap:+.3f}).", ""]
    else:
        lines += ["No second seed of the base SAE (`posttrain.seed_sae`): how many latents SAE training noise alone "
                  "leaves unmatched is not measured, so the new share is an upper bound on what post-training made.",
                  ""]
    lines += ["**The streetlight test across the training step**: matched (reused) minus unmatched (new) live latents "
              "of each SAE, read on its own model's reference-corpus feature cache; 95% BCa interval over latents, "
              "and the shuffled-group control (group labels permuted): its p and the middle 95% of its null. The "
              "second SAE's rows, where present, are the same split between two seeds of the base SAE: what SAE "
              "training noise alone does to the proxies.", "",
              "| SAE | proxy | matched | unmatched | matched - unmatched [95% BCa] | shuffled p | shuffled null 95% |",
              "|---|---|---|---|---|---|---|"]
    for key in ("posttrained", "base_seed"):
        for proxy, d in (r[key]["streetlight"]["proxies"].items() if key in r else ()):
            lines.append(f"| {r[key]['sae']} | {PROXY_NAMES.get(proxy, proxy)} (n {d['n_a']} / {d['n_b']}) | "
                         f"{d['mean_a']:.3f} | {d['mean_b']:.3f} | {_ci(d)} | {d.get('p_shuffled', float('nan')):.4f} | "
                         f"[{d.get('null_low', float('nan')):+.3f}, {d.get('null_high', float('nan')):+.3f}] |")
    return lines + ["", "Per latent: `reuse.csv` (best cosine, best base latent, matched, density, lexicality; both "
                    "SAEs).", ""]


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

