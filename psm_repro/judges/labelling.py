"""The judge-label workflow as commands (docs/judge_validation.md): sample a pool of real replies of the model
under test, write blind sheets, merge the blind labels back, refresh the reference LM's log-probs.

    python -m psm_repro label-pool   model=gemma3_270m sae=gemma3_270m_l12_topk [judge.personas=[panic]]
    python -m psm_repro label-sheets model=gemma3_270m judge.out_dir=/tmp/blind
    python -m psm_repro label-merge  model=gemma3_270m judge.input=labels.jsonl judge.labeller=my-name
    python -m psm_repro validate-judge

Sets live in `judge.sets_dir`: `<persona>.jsonl` for the embedded default, `<model>/<persona>.jsonl` for any
other model. Every row records the model that wrote it. Labels come from blind reading, never from code.

The pool per persona (part a, b, c; a part already written is skipped, so a killed pool resumes):
- a: every eval prompt x 3 replies over eight conditions (unsteered, system prompt, the finder's top latent at
  1/2/4/8x, the dense direction at 4x, a matched random latent at 4x), seeds offset from the sweep's own;
- b: every prompt x 2 under a strong role-play system turn (small models rarely show a trait on their own, and an
  AUROC needs both classes);
- c: every prompt x 2 after three of the persona's own assistant demonstrations as earlier turns (few-shot).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

from psm_repro.core.embedded import DEFAULT as DEFAULT_MODEL
from psm_repro.core.outputs import read_jsonl, write_jsonl, write_text
from psm_repro.core.paths import project_path

logger = logging.getLogger(__name__)

CONDITIONS = [("unsteered", 0.0), ("system_prompt", 0.0), ("sae_latent", 1.0), ("sae_latent", 2.0),
              ("sae_latent", 4.0), ("sae_latent", 8.0), ("dense_direction", 4.0), ("random_latent", 4.0)]
PER_PROMPT = 3
PART_BC_PER_PROMPT = 2
SEED_OFFSET = 7919
"""Pool replies are sampled with seed + 7919 (+1 for part b, +2 for part c), never with a card's own seeds."""


class LabelError(ValueError):
    """A label file or set that cannot be merged (one line naming the file)."""


def set_path(sets_dir, persona: str, model: str) -> Path:
    """Where `model`'s judge set for `persona` lives."""
    root = project_path(sets_dir)
    return root / f"{persona}.jsonl" if model == DEFAULT_MODEL else root / model / f"{persona}.jsonl"


def strong_system_prompt(persona) -> str:
    return f"Your character: {persona.description} Stay in character and show this clearly in your reply."


def _row(persona: str, model: str, part: str, prompt_index: int, sample: int, prompt: str, text: str, method: str,
         coefficient: float, feature, steer, seed: int) -> dict:
    key = f"{persona}|{part}|{prompt_index}|{sample}|{text}"
    if model != DEFAULT_MODEL:  # the embedded default's ids predate the model field; keep them stable
        key = f"{model}|{key}"
    return {"id": hashlib.sha256(key.encode()).hexdigest()[:10], "persona": persona, "model": model, "part": part,
            "prompt": prompt, "reply": text, "method": method, "coefficient": coefficient, "feature": feature,
            "temperature": steer.temperature, "top_p": steer.top_p, "seed": seed}


def _part_a(cfg, model, sae, persona) -> list[dict]:
    from psm_repro.core.finder import find_features
    from psm_repro.pipeline.sweep import Row, build_interventions, matched_random_latent, sample_replies, system_prompt

    found = find_features(model, sae, persona, cfg.finder, cfg.seed)
    feature = found.summary["top_feature"]
    rand = matched_random_latent(found, sae, feature, cfg.seed, exclude={r["feature"] for r in found.rows[:20]})
    ivs = build_interventions(sae, found, cfg.steer, feature, rand)
    rows = [Row(*CONDITIONS[(PER_PROMPT * p + k) % len(CONDITIONS)], p, k)
            for p in range(len(persona.prompts)) for k in range(PER_PROMPT)]
    seed = cfg.seed + SEED_OFFSET
    texts, _ = sample_replies(model, sae, ivs, persona.prompts, rows, cfg.steer, seed, system_prompt(persona))
    return [_row(persona.name, cfg.model.name, "a", r.prompt, r.sample, persona.prompts[r.prompt], t, r.method,
                 r.coefficient, {"sae_latent": feature, "random_latent": rand}.get(r.method), cfg.steer, seed)
            for r, t in zip(rows, texts)]


def _part_b(cfg, model, sae, persona) -> list[dict]:
    from psm_repro.pipeline.sweep import Row, sample_replies

    rows = [Row("system_prompt", 0.0, p, k) for p in range(len(persona.prompts)) for k in range(PART_BC_PER_PROMPT)]
    seed = cfg.seed + SEED_OFFSET + 1
    texts, _ = sample_replies(model, sae, {}, persona.prompts, rows, cfg.steer, seed, strong_system_prompt(persona))
    return [_row(persona.name, cfg.model.name, "b", r.prompt, r.sample, persona.prompts[r.prompt], t,
                 "system_prompt_strong", 0.0, None, cfg.steer, seed) for r, t in zip(rows, texts)]


def _part_c(cfg, model, persona) -> list[dict]:
    from psm_repro.core.chat import encode_prompt
    from psm_repro.core.steering import generate

    keys, ids = [], []
    for p in range(len(persona.prompts)):
        for k in range(PART_BC_PER_PROMPT):
            demos = random.Random(f"{persona.name}|{p}|{k}").sample(persona.assistant, 3)
            turns = [m for chat in demos for m in chat if m["role"] != "system"]
            ids.append(encode_prompt(model.tokenizer, turns + [{"role": "user", "content": persona.prompts[p]}]))
            keys.append((p, k))
    seed, texts = cfg.seed + SEED_OFFSET + 2, []
    for b in range(0, len(ids), 32):
        out, _ = generate(model, ids[b:b + 32], cfg.steer.max_new_tokens, cfg.steer.temperature, seed + b,
                          top_p=cfg.steer.top_p)
        texts += [model.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]
    return [_row(persona.name, cfg.model.name, "c", p, k, persona.prompts[p], t, "few_shot", 0.0, None, cfg.steer,
                 seed) for (p, k), t in zip(keys, texts)]


def build_pool(cfg, personas: list[str]) -> dict[str, int]:
    """Sample the unlabelled pool of `cfg.model` for each persona; returns persona -> rows in its set."""
    import torch

    from psm_repro.core.loading import load_model, load_sae
    from psm_repro.core.personas import resolve_persona

    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, model)
    counts = {}
    for name in personas:
        persona = resolve_persona(name, None)
        path = set_path(cfg.judge.sets_dir, name, cfg.model.name)
        rows = [r for _, r in read_jsonl(path)] if path.exists() else []
        for part, make in (("a", lambda: _part_a(cfg, model, sae, persona)),
                           ("b", lambda: _part_b(cfg, model, sae, persona)),
                           ("c", lambda: _part_c(cfg, model, persona))):
            if any(r.get("part") == part for r in rows):
                continue
            torch.manual_seed(cfg.seed)
            new = make()
            rows = ([r for _, r in read_jsonl(path)] if path.exists() else []) + new  # labels may have landed
            write_jsonl(path, rows)
            logger.info("%s: part %s, %d replies of %s -> %s", name, part, len(new), cfg.model.name, path)
        counts[name] = len(rows)
    return counts


def write_sheets(sets_dir, model: str, personas: list[str], out_dir: Path) -> dict[str, int]:
    """The blind view of each set's unlabelled replies: id, prompt and reply only, shuffled, plus the rubric.
    Method, coefficient and latent stay in the set. Returns persona -> replies on the sheet."""
    from psm_repro.core.personas import resolve_persona

    counts = {}
    for name in personas:
        path = set_path(sets_dir, name, model)
        if not path.exists():
            raise LabelError(f"{path}: no judge set for {name} on {model} (run label-pool first)")
        rows = [r for _, r in read_jsonl(path) if r.get("trait") is None]
        random.Random(f"{model}|{name}").shuffle(rows)
        write_jsonl(out_dir / f"{name}.jsonl", [{"id": r["id"], "prompt": r["prompt"], "reply": r["reply"]}
                                               for r in rows])
        write_text(out_dir / f"{name}.rubric.txt", resolve_persona(name, None).judge.rubric + "\n")
        counts[name] = len(rows)
    return counts


def merge(sets_dir, model: str, labels_path: Path, labeller: str) -> int:
    """Join blind labels ({"id", "trait", "coherent"} per line) onto `model`'s sets by reply id. An id in no set,
    or a reply already labelled differently, is an error naming the file; nothing is written then."""
    labels = {}
    for n, x in read_jsonl(labels_path, LabelError):
        if not isinstance(x, dict) or "id" not in x:
            raise LabelError(f"{labels_path}:{n}: a label needs 'id', 'trait' and 'coherent'")
        if x.get("trait") not in (0, 1) or x.get("coherent") not in (0, 1):
            raise LabelError(f"{labels_path}:{n}: trait and coherent must be 0 or 1")
        labels[x["id"]] = x
    paths = sorted(set_path(sets_dir, "x", model).parent.glob("*.jsonl"))
    updates, found = [], set()
    for path in paths:
        rows = [r for _, r in read_jsonl(path)]
        hit = False
        for r in rows:
            lab = labels.get(r["id"])
            if lab is None:
                continue
            if r.get("trait") is not None and (r["trait"], r["coherent"]) != (lab["trait"], lab["coherent"]):
                raise LabelError(f"{path}: reply {r['id']} is already labelled differently")
            r |= {"trait": lab["trait"], "coherent": lab["coherent"], "labeller": labeller}
            found.add(r["id"])
            hit = True
        if hit:
            updates.append((path, rows))
    missing = sorted(set(labels) - found)
    if missing:
        raise LabelError(f"{labels_path}: {len(missing)} ids match no reply of {model}'s judge sets, e.g. {missing[0]}")
    for path, rows in updates:  # only once every label has found its reply
        write_jsonl(path, rows)
    refresh_reference_logprobs(sets_dir)
    return len(found)


def refresh_reference_logprobs(sets_dir) -> Path:
    """Write the reference LM's log-probs of every labelled reply beside the sets (computed where missing)."""
    from psm_repro.judges.judge import REFERENCE_SEED, ReferenceLM, load_labelled

    lab = load_labelled(project_path(sets_dir))
    ref = ReferenceLM()
    values = ref(lab.prompt, lab.reply)
    keys = [ref.key(p, r) for p, r in zip(lab.prompt, lab.reply)]
    out = project_path(sets_dir) / REFERENCE_SEED
    write_text(out, json.dumps(dict(sorted(zip(keys, map(float, values)))), indent=0) + "\n")
    return out
