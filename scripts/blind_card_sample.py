"""Blind-read a result card's steered replies: write the blinded view, then join the labels back.

    .venv/bin/python scripts/blind_card_sample.py write <blind_dir> <key_dir> [persona ...]
    .venv/bin/python scripts/blind_card_sample.py score <blind_dir> <key_dir> [persona ...]
    .venv/bin/python scripts/blind_card_sample.py save <blind_dir> <key_dir> <out_dir> <labeller> [persona ...]
    .venv/bin/python scripts/blind_card_sample.py write-methods <blind_dir> <key_dir> [persona ...]
    .venv/bin/python scripts/blind_card_sample.py score-methods <blind_dir> <key_dir> [persona ...]

`write` takes, from results/steer_<persona>/samples.jsonl (test half), 12 replies each of the latent at the
card's chosen coefficient, the random latent at the same coefficient and the unsteered model, shuffles them
and writes <blind_dir>/<persona>.jsonl (id, prompt, reply only) and the persona's rubric. Method, coefficient
and judge scores go to <key_dir>, which the reader never opens. The reader adds `trait` and `coherent` (0/1)
per line by the rule in docs/judge_validation.md, into <blind_dir>/<persona>.labels.jsonl.

`write-methods` / `score-methods` do the same for the method comparison (docs/peers.md): 8 test-half replies of
each of the SAE latent, persona vector, CAA vector, dense direction, system prompt and unsteered model, each
method at its own chosen coefficient (the card's methods table).

Cards of another model: set PSM_REPRO_CARDS=results/gemma3_270m.

`score` joins labels and key and prints, per persona and method, the share of replies read as trait and
coherent next to the judge's mean headline score, and the card's verdict for the latent. `save` writes the
joined rows (key, labels and the labeller's name) to <out_dir>/<persona>.jsonl.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

from psm_repro.core.outputs import read_jsonl, write_jsonl
from psm_repro.core.paths import PROJECT_ROOT
from psm_repro.core.personas import resolve_persona

PER_METHOD = 12
CARDS = PROJECT_ROOT / os.environ.get("PSM_REPRO_CARDS", "results")
"""Where the cards are: results/ (the embedded default), or e.g. PSM_REPRO_CARDS=results/gemma3_270m."""


def _write_blind(persona: str, picked: list[dict], rng: random.Random, blind_dir: Path, key_dir: Path) -> None:
    """Shuffle the picked replies, give them random ids, write the blinded view, the rubric and the key."""
    rng.shuffle(picked)
    ids = rng.sample(range(10_000, 99_999), len(picked))
    write_jsonl(blind_dir / f"{persona}.jsonl", [{"id": i, "prompt": r["prompt"], "reply": r["reply"]}
                                                for i, r in zip(ids, picked)])
    (blind_dir / f"{persona}.rubric.txt").write_text(resolve_persona(persona, None).judge.rubric + "\n")
    write_jsonl(key_dir / f"{persona}.jsonl", [{"id": i, **r} for i, r in zip(ids, picked)])


def write(persona: str, blind_dir: Path, key_dir: Path) -> None:
    card = CARDS / f"steer_{persona}"
    coef = json.loads((card / "summary.json").read_text())["steering"]["headline"]["coefficient"]
    rows = [r for _, r in read_jsonl(card / "samples.jsonl") if r["split"] == "test"]
    rng = random.Random(f"blind-{persona}")
    picked = []
    for method, c in (("sae_latent", coef), ("random_latent", coef), ("unsteered", 0.0)):
        pool = [r for r in rows if r["method"] == method and r["coefficient"] == c]
        picked += rng.sample(pool, min(PER_METHOD, len(pool)))
    _write_blind(persona, picked, rng, blind_dir, key_dir)


METHODS = ("sae_latent", "persona_vector", "caa_vector", "dense_direction", "system_prompt", "unsteered")
PER_METHOD_COMPARED = 8


def write_methods(persona: str, blind_dir: Path, key_dir: Path) -> None:
    card = CARDS / f"steer_{persona}"
    chosen = {r["method"]: r["coefficient"]
              for r in json.loads((card / "summary.json").read_text())["steering"]["methods"]}
    rows = [r for _, r in read_jsonl(card / "samples.jsonl") if r["split"] == "test"]
    rng = random.Random(f"blind-methods-{persona}")
    picked = []
    for method in METHODS:
        if method in chosen:
            pool = [r for r in rows if r["method"] == method and r["coefficient"] == chosen[method]]
            picked += rng.sample(pool, min(PER_METHOD_COMPARED, len(pool)))
    _write_blind(persona, picked, rng, blind_dir, key_dir)


def score_methods(persona: str, blind_dir: Path, key_dir: Path) -> None:
    key = {r["id"]: r for _, r in read_jsonl(key_dir / f"{persona}.jsonl")}
    labels = {r["id"]: r for _, r in read_jsonl(blind_dir / f"{persona}.labels.jsonl")}
    card = json.loads((CARDS / f"steer_{persona}" / "summary.json").read_text())["steering"]
    ranks = {r["method"]: r["rank"] for r in card["methods"]}
    print(f"{persona}:")
    for method in METHODS:
        rows = [(key[i], labels[i]) for i in key if key[i]["method"] == method and i in labels]
        if not rows:
            continue
        both = sum(lab["trait"] and lab["coherent"] for _, lab in rows)
        judge = sum(k["score"] for k, _ in rows) / len(rows)
        print(f"  {method:16s} read trait+coherent {both}/{len(rows)}, trait {sum(l['trait'] for _, l in rows)}, "
              f"coherent {sum(l['coherent'] for _, l in rows)}; judge mean headline {judge:.2f}; card rank "
              f"{ranks.get(method)}")


def score(persona: str, blind_dir: Path, key_dir: Path) -> None:
    key = {r["id"]: r for _, r in read_jsonl(key_dir / f"{persona}.jsonl")}
    labels = {r["id"]: r for _, r in read_jsonl(blind_dir / f"{persona}.labels.jsonl")}
    card = json.loads((CARDS / f"steer_{persona}" / "summary.json").read_text())["steering"]
    verdicts = {c: card["headline"][f"vs_{c}"].get("verdict") or ("beats" if card["headline"][f"vs_{c}"]["beats"]
                                                                   else "no")
                for c in ("unsteered", "random_latent")}
    print(f"{persona}: latent {card['feature']} at {card['headline']['coefficient']}x; card verdict vs unsteered "
          f"{verdicts['unsteered']}, vs random {verdicts['random_latent']}")
    for method in ("sae_latent", "random_latent", "unsteered"):
        rows = [(key[i], labels[i]) for i in key if key[i]["method"] == method and i in labels]
        both = sum(lab["trait"] and lab["coherent"] for _, lab in rows)
        trait = sum(lab["trait"] for _, lab in rows)
        coh = sum(lab["coherent"] for _, lab in rows)
        judge = sum(k["score"] for k, _ in rows) / max(len(rows), 1)
        print(f"  {method:14s} read trait+coherent {both}/{len(rows)}, trait {trait}, coherent {coh}; "
              f"judge mean headline {judge:.2f}")


def save(persona: str, blind_dir: Path, key_dir: Path, out_dir: Path, labeller: str) -> None:
    labels = {r["id"]: r for _, r in read_jsonl(blind_dir / f"{persona}.labels.jsonl")}
    rows = [{**r, "trait": labels[r["id"]]["trait"], "coherent": labels[r["id"]]["coherent"], "labeller": labeller}
            for _, r in read_jsonl(key_dir / f"{persona}.jsonl")]
    write_jsonl(out_dir / f"{persona}.jsonl", sorted(rows, key=lambda r: r["id"]))


if __name__ == "__main__":
    cmd, blind_dir, key_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    rest = sys.argv[4:]
    out_dir, labeller = (Path(rest[0]), rest[1]) if cmd == "save" else (None, None)
    rest = rest[2:] if cmd == "save" else rest
    personas = rest or sorted(p.name.removeprefix("steer_") for p in CARDS.glob("steer_*"))
    for p in personas:
        if cmd == "save":
            save(p, blind_dir, key_dir, out_dir, labeller)
        else:
            {"write": write, "score": score, "write-methods": write_methods,
             "score-methods": score_methods}[cmd](p, blind_dir, key_dir)
