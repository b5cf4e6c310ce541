"""The commands: parse `python -m psm_repro <command> [overrides]`, compose the config (psm_repro/cli/compose.py),
call the plain function that does the work and print its short summary. Errors reach the user as one line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from psm_repro.cli.compose import compose, multirun as run_multirun, one_line

USAGE = """usage: python -m psm_repro <command> [hydra overrides]

commands:
  run        find a persona's shared latents, then steer with the top one against controls
  find       feature search only (writes features.csv + summary.md)
  steer      one prompt, unsteered vs steered, printed side by side
  tables     rebuild results/README.md from saved result cards (no model needed)
  build-corpus  write (or finish) the SAE training corpus: token-id shards + manifest (resumable)
  train-sae  train the embedded model's SAE on a built corpus (resumes after a kill)
  bench      speed against plain HF and the machine's limit (writes results/bench/)
  finetune   emergent misalignment: narrow fine-tune + control, broad misalignment, latent diff, steering
  posttrain  make a base model an assistant (LoRA SFT) beside a narrative control; blind sheet, SAE transfer,
             model diff through the base SAE (experiment=posttrain_gemma3_270m)
  judge      score replies (JSONL with prompt, reply) with a persona's judge: trait, coherence, headline score
  validate-judge  each persona judge's AUROC against blind reading labels on real replies (out of fold)
  label-pool    sample the unlabelled judge-set replies of `model` for blind reading (resumable)
  label-sheets  write the blind sheets (id, prompt, reply; shuffled) and rubrics to judge.out_dir
  label-merge   join blind labels (judge.input, by judge.labeller) onto `model`'s judge sets
  explain    a dashboard for any latent: top contexts from the reference corpus, density, lexicality,
             promoted tokens, activations on the persona's items (explain latent=123)

options:
  -m, --multirun  Hydra multirun: comma-separated overrides sweep, one run directory each
                  (hydra/launcher=joblib for one machine, a submitit_slurm config for a cluster)

examples:
  python -m psm_repro run experiment=steer_secrecy
  python -m psm_repro -m run experiment=steer_secrecy,steer_panic
  python -m psm_repro find persona=panic hydra.run.dir=runs/panic
  python -m psm_repro steer persona=sarcasm steer.prompt="How do I boil an egg?"
  python -m psm_repro finetune experiment=em_risky_finance
  python -m psm_repro posttrain experiment=posttrain_gemma3_270m
  python -m psm_repro judge persona=sarcasm judge.input=replies.jsonl judge.output=scored.jsonl
  python -m psm_repro validate-judge
  python -m psm_repro label-pool model=gemma3_270m sae=gemma3_270m_l12_topk judge.personas=[panic]
  python -m psm_repro explain latent=123 persona=panic
"""
COMMANDS = ("run", "find", "steer", "tables", "build-corpus", "train-sae", "bench", "finetune", "posttrain", "judge",
            "validate-judge",
            "label-pool", "label-sheets", "label-merge", "explain")
logger = logging.getLogger("psm_repro")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    multirun = any(a in ("-m", "--multirun") for a in argv)
    argv = [a for a in argv if a not in ("-m", "--multirun")]
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"psm_repro: unknown command '{argv[0]}'", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    command, overrides = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "sae_lens", "transformers", "sentence_transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if command == "tables":
            from psm_repro.core.outputs import write_text
            from psm_repro.core.paths import output_path
            from psm_repro.report.tables import render, splice_into_readme

            from psm_repro.posttraining.card import rerender_all

            rerender_all(output_path("results"))  # posttrain cards pick up their blind labels
            out = output_path("results") / "README.md"
            table = render(output_path("results"))
            write_text(out, table)
            readme = splice_into_readme(output_path("README.md"), table)
            if readme is not None:
                write_text(output_path("README.md"), readme)
            print(f"wrote {out}")
            return 0
        if multirun:  # Hydra's sweeper expands and validates comma-separated overrides itself
            return run_multirun(command, overrides, _dispatch)
        cfg, run_dir = compose(command, overrides)  # validates every override before anything runs
        return _dispatch(command, cfg, run_dir)
    except Exception as err:  # one line for the user; the traceback only with PSM_REPRO_DEBUG=1
        import os

        if os.environ.get("PSM_REPRO_DEBUG"):
            raise
        print(f"psm_repro {command}: error: {one_line(err)}", file=sys.stderr)
        return 1


def _dispatch(command: str, cfg, run_dir: Path) -> int:
    from psm_repro.pipeline import jobs as pipeline

    if cfg.plan:
        from psm_repro.pipeline.plan import render_plan

        print(render_plan(cfg, command))
        return 0

    if command in ("run", "find"):
        summary = pipeline.run(cfg, run_dir, steer_too=(command == "run"))
        _print_short_table(summary, run_dir)
    elif command == "steer":
        plain, steered, feature, url = pipeline.steer_once(cfg)
        coef = max(cfg.steer.coefficients, key=abs)
        print(f"prompt: {cfg.steer.prompt}\nlatent {feature}{f' ({url})' if url else ''}, mode {cfg.steer.mode}, "
              f"coefficient {coef}\n")
        _side_by_side("unsteered", plain, f"steered (x{coef})", steered)
    elif command == "bench":
        from psm_repro.bench.speed import run_bench
        from psm_repro.core.paths import output_path

        out = output_path(cfg.bench.out_dir)
        run_bench(cfg, out)
        print((out / "bench.md").read_text())
    elif command == "finetune":
        s = pipeline.emergent_misalignment(cfg, run_dir)
        h = s["headline"]
        nc, leak = h["narrow_vs_control_broad"], h["narrow_vs_control_leak"]
        v = s["judge_validity"]
        print(f"\n{s['experiment']}: narrow - control broad misalignment {nc['diff']:+.3f} "
              f"[{nc['ci_low']:+.3f}, {nc['ci_high']:+.3f}], leak rate {leak['diff']:+.3f} "
              f"[{leak['ci_low']:+.3f}, {leak['ci_high']:+.3f}] ({h['broad_misalignment_answer']}); judge AUROC "
              + (f"{v['auroc']:.2f}" if v else "n/a (no labelled replies)"))
        print(f"toxic-persona latent {h['toxic_latent']} ranks {h['toxic_rank']} of {s['d_sae']} in the diff; amplify "
              f"beats random: top diffed {h['top_amplify_beats_random']}, toxic {h['toxic_amplify_beats_random']}; "
              f"suppress beats random: top diffed {h['top_suppress_beats_random']}, toxic "
              f"{h['toxic_suppress_beats_random']}")
        print(f"results in {run_dir}")
    elif command == "posttrain":
        from psm_repro.posttraining.run import posttrain

        s = posttrain(cfg, run_dir)
        fl, tr = s["final_loss"], {(r["model"], r["slice"]): r for r in s["transfer"]}
        print(f"\n{s['experiment']}: final loss SFT {fl['posttrained']:.3f}, control {fl['control']:.3f}; base SAE on "
              "the post-trained model: " + ", ".join(f"{sl} FVU {tr[('posttrained', sl)]['fvu']:.3f}"
                                                    for m, sl in tr if m == "posttrained")
              + f"; {s['diff']['significant_risers']} of the top {s['config']['diff_top_n']} risers at q < 0.05")
        print(f"blind sheet for reading: {run_dir}/reading/sheet.jsonl (labels -> reading/labels.jsonl, then `tables`)")
        print(f"results in {run_dir}")
    elif command == "judge":
        from psm_repro.judges.judging import judge_file

        v = judge_file(cfg)
        print(f"wrote {cfg.judge.output}: {v.backend} judge for `{v.persona}`, headline AUROC {v.auroc_headline:.3f} "
              f"on {v.n} labelled real replies ({'valid' if v.valid else 'NOT valid: no verdict should rest on it'})")
    elif command == "validate-judge":
        import time

        from psm_repro.core.paths import output_path
        from psm_repro.judges.judging import validate_judges

        out = output_path(cfg.judge.out_dir or f"runs/judge_validation/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
        validate_judges(cfg, out)
        print((out / "validity.md").read_text())
    elif command.startswith("label-"):
        _label(command, cfg)
    elif command == "explain":
        from psm_repro.pipeline.explain import explain

        out, md = explain(cfg, run_dir)
        print(md)
        print(f"pages in {out}")
    elif command == "build-corpus":
        m = pipeline.build_corpus(cfg)
        sl = m["slices"]
        print(f"corpus in {cfg.corpus.out_dir}: " + ", ".join(
            f"{name} {v['tokens']:,} training + {v['heldout_tokens']:,} held-out tokens" for name, v in sl.items())
            + f"; {m['overlap']['dropped_docs']} documents dropped for overlap with experiments/")
    elif command == "train-sae":
        report = pipeline.train_sae(cfg)
        h = report["heldout"]
        print(f"SAE written to {cfg.train_sae.out_dir} ({report['tokens_per_s']:,.0f} tokens/s): " + "; ".join(
            f"{name} FVU {m['fvu']:.3f}, CE recovered {m['ce_loss_recovered']:.1%}, L0 {m['l0']:.1f}"
            for name, m in h["slices"].items()) + f"; dead {h['dead_fraction']:.1%}")
    return 0


def _label(command: str, cfg) -> None:
    from psm_repro.core.paths import output_path
    from psm_repro.judges import labelling
    from psm_repro.judges.validation import shipped_personas

    personas = list(cfg.judge.personas) or [p.name for p in shipped_personas()]
    model = cfg.model.name
    if command == "label-pool":
        for name, n in labelling.build_pool(cfg, personas).items():
            print(f"{labelling.set_path(cfg.judge.sets_dir, name, model)}: {n} replies of {model}")
    elif command == "label-sheets":
        if not cfg.judge.out_dir:
            raise labelling.LabelError("judge.out_dir: label-sheets needs a directory for the blind sheets")
        out = output_path(cfg.judge.out_dir)
        for name, n in labelling.write_sheets(cfg.judge.sets_dir, model, personas, out).items():
            print(f"{out / (name + '.jsonl')}: {n} unlabelled replies of {model}, rubric beside it")
    else:
        if not cfg.judge.input or not cfg.judge.labeller:
            raise labelling.LabelError("judge.input and judge.labeller: label-merge needs the label file and who read it")
        n = labelling.merge(cfg.judge.sets_dir, model, output_path(cfg.judge.input), cfg.judge.labeller)
        print(f"merged {n} labels from {cfg.judge.input} into {model}'s judge sets")


def _side_by_side(left_title: str, left: str, right_title: str, right: str, width: int = 48) -> None:
    import textwrap

    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    print(f"{left_title:<{width}} | {right_title}")
    print("-" * width + "-+-" + "-" * width)
    for i in range(max(len(a), len(b))):
        print(f"{a[i] if i < len(a) else '':<{width}} | {b[i] if i < len(b) else ''}")


def _print_short_table(summary: dict, run_dir: Path) -> None:
    f = summary["finder"]
    print(f"\n{summary['experiment']} ({summary['persona']}): top latent {f['top_feature']} "
          f"shared score {f['top_score']:.3f} (chance p95 {f['shuffled_max_score_p95']:.3f})")
    s = summary.get("steering")
    if s:
        h = s["headline"]
        print(f"steering at coefficient {h['coefficient']} (test half, headline score P(trait) x P(coherent); "
              f"judge AUROC {s['judge_auroc']:.2f} on labelled real replies):")
        for c in ("unsteered", "random_latent", "dense_direction", "system_prompt"):
            d = h["vs_" + c]
            word = {"beats": "beats", "no": "does not beat"}.get(d.get("verdict"), d.get("verdict", "?"))
            print(f"  latent - {c:<16} {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                  f"  Holm p {d.get('p_holm', float('nan')):.3f}  {word}")
    print(f"results in {run_dir}")
