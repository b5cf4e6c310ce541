"""The rules every persona obeys, in one place: set sizes the statistics need, chat shapes, matched pairs, unique
items, no search/eval overlap. psm_repro/core/personas.py runs them on a file (reporting `file:line:`) and on every
`Persona` built in memory (reporting the persona and the field); `chk` is the reporter either way."""

from __future__ import annotations

from dataclasses import dataclass

from psm_repro.config.sections import MIN_EVAL_ITEMS, SPLIT_WHY

ROLES = {"system", "user", "assistant"}
SOURCES = ("native", "persona_vectors", "caa")
SEARCH_KEYS = ("narrative", "narrative_neutral", "assistant", "assistant_neutral")
SITUATION_KEYS = ("situation", "situation_neutral")
MIN_PAIRS = 8
"""Matched pairs each paired search set needs (narrative, assistant, situation): the finder's sign-flip test gives
p >= 2^-n over n pairs (1/256 at 8), which must still pass BH-FDR over the latents tested, and each half of its
stability split keeps n/2 pairs."""
PAIRS_WHY = ("the finder's paired sign-flip test gives p >= 2^-n over n pairs, which must still pass BH-FDR over "
             "the latents tested, and each half of its stability split keeps n/2")
MINIMUMS = {"search": MIN_PAIRS, "prompts": MIN_EVAL_ITEMS, "pairs": MIN_EVAL_ITEMS, "judge": 1}
"""Set sizes the statistics need, for any persona."""
WHY = {"search": PAIRS_WHY, "prompts": f"eval prompts: {SPLIT_WHY}", "pairs": f"eval pairs: {SPLIT_WHY}", "judge": ""}
SHIPPED_MINIMUMS = {"search": 40, "prompts": 30, "pairs": 30, "judge": 30}
"""Set sizes of the shipped files."""


@dataclass
class Judge:
    rubric: str
    trait_examples: list[str]
    neutral_examples: list[str]


@dataclass
class Pair:
    prompt: str
    trait: str
    neutral: str


class PersonaError(ValueError):
    """A persona is malformed; the message starts with `file:line:` (a file) or `Persona 'name':` (in memory)."""


class FieldReporter:
    """Reports a broken rule in a Persona built in memory: its file (an imported one) or its name, then the field."""

    def __init__(self, persona):
        self.where = str(persona.path) if persona.path else f"Persona {persona.name!r}"

    def fail(self, msg: str, *keys):
        raise PersonaError(f"{self.where}: {msg}")


def check_size(chk, label: str, n: int, kind: str, shipped: bool, *keys, unit: str = "items") -> None:
    minimum = (SHIPPED_MINIMUMS if shipped else MINIMUMS)[kind]
    if n < minimum:
        why = "shipped files" if shipped else WHY[kind]
        chk.fail(f"{label} has {n} {unit}, at least {minimum} required" + (f" ({why})" if why else ""), *keys)


def check_paired(chk, a: str, trait, neutral, kind: str, required: bool, shipped: bool = False) -> None:
    """A trait set and its matched neutral set (search.<a>, search.<a>_neutral); kind: text (narratives), chat
    (scripted chats) or situation (prompts the model replies to). Not `required`: both may be empty."""
    b = f"{a}_neutral"
    sets = {a: trait, b: neutral}
    if not required and isinstance(trait, list) and isinstance(neutral, list) and not trait and not neutral:
        return
    if not required and isinstance(trait, list) and isinstance(neutral, list) and bool(trait) != bool(neutral):
        present, missing = (a, b) if trait else (b, a)
        chk.fail(f"search.{present} needs its matched search.{missing}", "search", present)
    for key, items in sets.items():
        if not isinstance(items, list) or not items:
            chk.fail(f"search.{key} must be a non-empty list", "search", key)
        for i, item in enumerate(items):
            if kind != "text":
                check_chat(chk, item, ("search", key, i), situation=kind == "situation")
            elif not isinstance(item, str) or not item.strip():
                chk.fail(f"search.{key}[{i}] must be a non-empty string", "search", key, i)
        check_unique(chk, [item_text(x) for x in items], ("search", key))
    if len(trait) != len(neutral):
        chk.fail(f"search.{b} has {len(neutral)} items but search.{a} has {len(trait)}; item i must match item i",
                 "search", b)
    check_size(chk, f"search.{a}", len(trait), "search", shipped, "search", a,
                unit="pairs" if kind == "situation" else "items")
    for i, (x, y) in enumerate(zip(trait, neutral)):
        if kind == "chat" and [m for m in x if m["role"] != "assistant"] != [m for m in y if m["role"] != "assistant"]:
            chk.fail(f"search.{b}[{i}] must have the same user/system turns as search.{a}[{i}]", "search", b, i)
        if kind == "situation" and [m["role"] for m in x] != [m["role"] for m in y]:
            chk.fail(f"search.{b}[{i}] must have the same turns (roles, in order) as search.{a}[{i}]", "search", b, i)
        if kind == "situation" and x == y:
            chk.fail(f"search.{b}[{i}] is identical to search.{a}[{i}]; it must differ in the situation",
                     "search", b, i)


def got(value) -> str:
    return f"got {type(value).__name__} {str(value)[:40]}"


def check_chat(chk, chat, where: tuple, situation: bool = False) -> None:
    """A chat of {role, content} turns, string roles and contents, that starts with a user turn (after optional
    system turns) and ends with an assistant turn; a situation item holds only system and user turns and ends with
    a user turn (the model writes the reply)."""
    label = f"{where[0]}.{where[1]}[{where[2]}]"
    if not isinstance(chat, list) or not chat:
        chk.fail(f"{label} must be a non-empty list of {{role, content}} turns", *where)
    for j, turn in enumerate(chat):
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            chk.fail(f"{label}[{j}] must have exactly the keys role, content", *where, j)
        role, content = turn["role"], turn["content"]
        if not isinstance(role, str):
            chk.fail(f"{label}[{j}]: role must be a string ({', '.join(sorted(ROLES))}), {got(role)}", *where, j)
        if situation and role not in ("system", "user"):
            chk.fail(f"{label}[{j}]: role '{role}': a situation item holds only system and user turns "
                     "(the model writes the reply)", *where, j)
        if role not in ROLES:
            chk.fail(f"{label}[{j}]: unknown role '{role}' (expected one of {sorted(ROLES)})", *where, j)
        if not isinstance(content, str):
            chk.fail(f"{label}[{j}]: content must be a non-empty string, {got(content)}", *where, j)
        if not content.strip():
            chk.fail(f"{label}[{j}]: content must be a non-empty string", *where, j)
    if next((t["role"] for t in chat if t["role"] != "system"), None) != "user":
        chk.fail(f"{label}: must start with a user turn (after optional system turns)", *where)
    last = "user" if situation else "assistant"
    if chat[-1]["role"] != last:
        chk.fail(f"{label} must end with a{'n' if last == 'assistant' else ''} {last} turn", *where)


def check_eval(chk, prompts, pairs, judge, search_texts: set[str], shipped: bool = False) -> None:
    """Eval prompts and pairs (each may be empty: `find` needs neither) and the judge's examples."""
    if not isinstance(prompts, list):
        chk.fail("eval.prompts must be a list of strings", "eval", "prompts")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            chk.fail(f"eval.prompts[{i}] must be a non-empty string", "eval", "prompts", i)
    if prompts:
        check_size(chk, "eval.prompts", len(prompts), "prompts", shipped, "eval", "prompts")
    check_unique(chk, prompts, ("eval", "prompts"))
    if not isinstance(pairs, list):
        chk.fail("eval.pairs must be a list of Pair(prompt, trait, neutral)", "eval", "pairs")
    for i, p in enumerate(pairs):
        if not isinstance(p, Pair):
            chk.fail(f"eval.pairs[{i}] must be a Pair(prompt, trait, neutral), {got(p)}", "eval", "pairs", i)
        if not all(isinstance(v, str) and v.strip() for v in (p.prompt, p.trait, p.neutral)):
            chk.fail(f"eval.pairs[{i}]: prompt, trait and neutral must be non-empty strings", "eval", "pairs", i)
    if pairs:
        check_size(chk, "eval.pairs", len(pairs), "pairs", shipped, "eval", "pairs")
    check_unique(chk, [p.prompt for p in pairs], ("eval", "pairs"))
    examples = []
    if judge is not None:
        if not isinstance(judge, Judge):
            chk.fail(f"eval.judge must be a Judge(rubric, trait_examples, neutral_examples), {got(judge)}",
                     "eval", "judge")
        if not isinstance(judge.rubric, str) or not judge.rubric.strip():
            chk.fail("eval.judge.rubric must be a non-empty string", "eval", "judge", "rubric")
        for key in ("trait_examples", "neutral_examples"):
            items = getattr(judge, key)
            if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
                chk.fail(f"eval.judge.{key} must be a non-empty list of strings", "eval", "judge", key)
            check_size(chk, f"eval.judge.{key}", len(items), "judge", shipped, "eval", "judge", key)
            check_unique(chk, items, ("eval", "judge", key))
            examples += items
    # search/eval overlap: an eval text that was also used to find the latent would make the
    # steering measurement circular
    for key, texts in (("prompts", prompts), ("pairs", [t for p in pairs for t in (p.prompt, p.trait, p.neutral)]),
                       ("judge", examples)):
        for t in texts:
            if t.strip().lower() in search_texts:
                chk.fail(f"eval.{key} repeats a search item ({t[:40]!r}...): search/eval overlap", "eval", key)


def item_text(item) -> str:
    return item if isinstance(item, str) else "\n".join(f"{m['role']}: {m['content']}" for m in item)


def check_unique(chk, texts: list[str], where: tuple) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(texts):
        key = t.strip().lower()
        if key in seen:
            chk.fail(f"{'.'.join(where)}[{i}] duplicates item {seen[key]}", *where, i)
        seen[key] = i


def all_texts(search: dict) -> set[str]:
    out = {t.strip().lower() for t in search["narrative"] + search["narrative_neutral"]}
    for key in ("assistant", "assistant_neutral") + SITUATION_KEYS:
        out |= {m["content"].strip().lower() for chat in search.get(key) or [] for m in chat}
    return out
