"""Persona files: loading and validation of the public extension format (docs/persona_format.md).

Errors are reported as `file:line: message`, with the line of the offending YAML node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from psm_repro.loading import PROJECT_ROOT
from psm_repro.peer_formats import PeerFormatError, Peers, detect_format, read_ab, read_peers_section, read_trait, split_ab

PERSONA_DIR = PROJECT_ROOT / "experiments" / "personas"
ROLES = {"system", "user", "assistant"}
SEARCH_KEYS = ("narrative", "narrative_neutral", "assistant", "assistant_neutral")
SITUATION_KEYS = ("situation", "situation_neutral")
MIN_SITUATION_PAIRS = 8
"""Fewer matched situation pairs than this cannot reach p < 0.05 / (latents tested) with a paired sign-flip test."""
# Minimum sizes for shipped files; user files are only required to be non-empty.
SHIPPED_MINIMUMS = {"search": 40, "prompts": 30, "pairs": 30, "judge": 30}

Chat = list[dict[str, str]]


class PersonaError(ValueError):
    """A persona file is malformed; the message starts with `file:line:`."""


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


@dataclass
class Persona:
    """A validated persona: search sets for finding latents, eval sets for measuring steering."""

    name: str
    description: str
    narrative: list[str]
    narrative_neutral: list[str]
    assistant: list[Chat]
    assistant_neutral: list[Chat]
    prompts: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    judge: Judge | None = None
    path: Path | None = None
    ordinary: Path | None = None
    """Ordinary chats with matched prose (psm_repro/ordinary.py) on which the narrative latents are read."""
    situation: list[Chat] = field(default_factory=list)
    """User turns (and optional system turns) that put the assistant in the situation; no assistant text."""
    situation_neutral: list[Chat] = field(default_factory=list)
    """Item i matches situation[i]: the same turns, differing only in the situation."""
    peers: Peers | None = None
    """The peer methods' data (persona vector, CAA vector, A/B items), from the `peers` section or an imported file."""
    source: str = "native"
    """native (YAML persona), persona_vectors (trait JSON) or caa (A/B JSON)."""

    @property
    def has_eval(self) -> bool:
        return bool(self.prompts and self.judge)

    @property
    def has_narratives(self) -> bool:
        return bool(self.narrative)


def persona_path(name: str) -> Path:
    path = PERSONA_DIR / f"{name}.yaml"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in PERSONA_DIR.glob("*.yaml")))
        raise PersonaError(f"persona={name}: no file {path.relative_to(PROJECT_ROOT)} (shipped: {shipped})")
    return path


class _Checker:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.root = yaml.compose(text)

    def line(self, *keys) -> int:
        node = self.root
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                match = [v for k, v in node.value if k.value == key]
                if not match:
                    break
                node = match[0]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
            else:
                break
        return node.start_mark.line + 1 if node is not None else 1

    def fail(self, msg: str, *keys):
        raise PersonaError(f"{self.path}:{self.line(*keys)}: {msg}")


def read_yaml(path: Path) -> tuple[object, _Checker]:
    """Parse a data file; a syntax error becomes `file:line: not valid YAML`."""
    text = path.read_text()
    try:
        return yaml.safe_load(text), _Checker(path, text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise PersonaError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML") from None


def load_persona(path: str | Path, shipped: bool = False) -> Persona:
    """Read and validate one persona file; `shipped=True` also enforces the minimum set sizes."""
    path = Path(path)
    if not path.exists():
        raise PersonaError(f"{path}: persona file not found")
    data, chk = read_yaml(path)
    if not isinstance(data, dict):
        raise PersonaError(f"{path}:1: expected a mapping with name, description, search, eval")
    for key in ("name", "description", "search"):
        if key not in data:
            chk.fail(f"missing section '{key}'")
    if data["name"] != path.stem:
        chk.fail(f"name '{data['name']}' must equal the file name '{path.stem}'", "name")
    if not isinstance(data["description"], str) or not data["description"].strip():
        chk.fail("description must be a non-empty string", "description")
    search = data["search"]
    if not isinstance(search, dict):
        chk.fail("search must be a mapping", "search")
    minimum = SHIPPED_MINIMUMS if shipped else {k: 1 for k in SHIPPED_MINIMUMS}
    for key in SEARCH_KEYS:
        if key not in search:
            chk.fail(f"missing section 'search.{key}'", "search")
        items = search[key]
        if not isinstance(items, list) or not items:
            chk.fail(f"search.{key} must be a non-empty list", "search", key)
        if len(items) < minimum["search"]:
            chk.fail(f"search.{key} has {len(items)} items, at least {minimum['search']} required", "search", key)
    for key in ("narrative", "narrative_neutral"):
        for i, item in enumerate(search[key]):
            if not isinstance(item, str) or not item.strip():
                chk.fail(f"search.{key}[{i}] must be a non-empty string", "search", key, i)
    for key in ("assistant", "assistant_neutral"):
        for i, chat in enumerate(search[key]):
            _check_chat(chk, chat, ("search", key, i))
    for a, b in (("narrative", "narrative_neutral"), ("assistant", "assistant_neutral")):
        if len(search[a]) != len(search[b]):
            chk.fail(f"search.{b} has {len(search[b])} items but search.{a} has {len(search[a])}; "
                     "item i must match item i", "search", b)
    for i, (chat, neutral) in enumerate(zip(search["assistant"], search["assistant_neutral"])):
        if [m for m in chat if m["role"] != "assistant"] != [m for m in neutral if m["role"] != "assistant"]:
            chk.fail(f"search.assistant_neutral[{i}] must have the same user/system turns as search.assistant[{i}]",
                     "search", "assistant_neutral", i)
    for key in SEARCH_KEYS:
        _check_unique(chk, [_item_text(x) for x in search[key]], ("search", key))

    persona = Persona(name=data["name"], description=data["description"], narrative=search["narrative"],
                      narrative_neutral=search["narrative_neutral"], assistant=search["assistant"],
                      assistant_neutral=search["assistant_neutral"], path=path)
    persona.situation, persona.situation_neutral = _check_situations(chk, search, shipped)
    if "peers" in data:
        try:
            persona.peers = read_peers_section(path, data["peers"], chk.fail)
        except PeerFormatError as err:
            raise PersonaError(str(err)) from None
    if "ordinary" in data:
        ordinary = PROJECT_ROOT / "experiments" / str(data["ordinary"])
        if not ordinary.is_file():
            chk.fail(f"ordinary: no file {ordinary} (a path under experiments/)", "ordinary")
        persona.ordinary = ordinary
    ev = data.get("eval")
    if ev is None:
        if shipped:
            chk.fail("missing section 'eval'")
        return persona
    if not isinstance(ev, dict):
        chk.fail("eval must be a mapping", "eval")
    for key in ("prompts", "pairs", "judge"):
        if key not in ev:
            chk.fail(f"missing section 'eval.{key}'", "eval")
    for key in ("prompts", "pairs"):
        if not isinstance(ev[key], list) or not ev[key]:
            chk.fail(f"eval.{key} must be a non-empty list", "eval", key)
        if len(ev[key]) < minimum[key]:
            chk.fail(f"eval.{key} has {len(ev[key])} items, at least {minimum[key]} required", "eval", key)
    for i, p in enumerate(ev["prompts"]):
        if not isinstance(p, str) or not p.strip():
            chk.fail(f"eval.prompts[{i}] must be a non-empty string", "eval", "prompts", i)
    pairs = []
    for i, p in enumerate(ev["pairs"]):
        if not isinstance(p, dict) or set(p) != {"prompt", "trait", "neutral"}:
            chk.fail(f"eval.pairs[{i}] must have exactly the keys prompt, trait, neutral", "eval", "pairs", i)
        if not all(isinstance(v, str) and v.strip() for v in p.values()):
            chk.fail(f"eval.pairs[{i}]: prompt, trait and neutral must be non-empty strings", "eval", "pairs", i)
        pairs.append(Pair(**p))
    judge = ev["judge"]
    if not isinstance(judge, dict) or set(judge) != {"rubric", "trait_examples", "neutral_examples"}:
        chk.fail("eval.judge must have exactly the keys rubric, trait_examples, neutral_examples", "eval", "judge")
    for key in ("trait_examples", "neutral_examples"):
        items = judge[key]
        if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
            chk.fail(f"eval.judge.{key} must be a non-empty list of strings", "eval", "judge", key)
        if len(items) < minimum["judge"]:
            chk.fail(f"eval.judge.{key} has {len(items)} items, at least {minimum['judge']} required",
                     "eval", "judge", key)
        _check_unique(chk, items, ("eval", "judge", key))
    _check_unique(chk, ev["prompts"], ("eval", "prompts"))
    _check_unique(chk, [p.prompt for p in pairs], ("eval", "pairs"))
    # search/eval overlap: an eval text that was also used to find the latent would make the
    # steering measurement circular
    search_texts = _all_texts(search)
    for key, texts in (("prompts", ev["prompts"]), ("pairs", [t for p in pairs for t in (p.prompt, p.trait, p.neutral)]),
                       ("judge", judge["trait_examples"] + judge["neutral_examples"])):
        for i, t in enumerate(texts):
            if t.strip().lower() in search_texts:
                chk.fail(f"eval.{key} repeats a search item ({t[:40]!r}...): search/eval overlap", "eval", key)
    persona.prompts = ev["prompts"]
    persona.pairs = pairs
    persona.judge = Judge(judge["rubric"], judge["trait_examples"], judge["neutral_examples"])
    return persona


def _check_chat(chk: _Checker, chat, where: tuple, situation: bool = False) -> None:
    """A chat of {role, content} turns ending with an assistant turn; a situation item holds only system and
    user turns and ends with a user turn (the model writes the reply)."""
    label = f"{where[0]}.{where[1]}[{where[2]}]"
    if not isinstance(chat, list) or not chat:
        chk.fail(f"{label} must be a non-empty list of {{role, content}} turns", *where)
    for j, turn in enumerate(chat):
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            chk.fail(f"{label}[{j}] must have exactly the keys role, content", *where, j)
        if situation and turn["role"] not in ("system", "user"):
            chk.fail(f"{label}[{j}]: role '{turn['role']}': a situation item holds only system and user turns "
                     "(the model writes the reply)", *where, j)
        if turn["role"] not in ROLES:
            chk.fail(f"{label}[{j}]: unknown role '{turn['role']}' (expected one of {sorted(ROLES)})", *where, j)
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            chk.fail(f"{label}[{j}]: content must be a non-empty string", *where, j)
    last = "user" if situation else "assistant"
    if chat[-1]["role"] != last:
        chk.fail(f"{label} must end with a{'n' if last == 'assistant' else ''} {last} turn", *where)


def _check_situations(chk: _Checker, search: dict, shipped: bool) -> tuple[list[Chat], list[Chat]]:
    """The optional matched situation sets: prompts only (system and user turns, ending with a user turn)."""
    present = [k for k in SITUATION_KEYS if k in search]
    if not present:
        return [], []
    if len(present) == 1:
        missing = SITUATION_KEYS[1 - SITUATION_KEYS.index(present[0])]
        chk.fail(f"search.{present[0]} needs its matched search.{missing}", "search", present[0])
    minimum = SHIPPED_MINIMUMS["search"] if shipped else MIN_SITUATION_PAIRS
    for key in SITUATION_KEYS:
        items = search[key]
        if not isinstance(items, list) or not items:
            chk.fail(f"search.{key} must be a non-empty list", "search", key)
        for i, chat in enumerate(items):
            _check_chat(chk, chat, ("search", key, i), situation=True)
        _check_unique(chk, [_item_text(x) for x in items], ("search", key))
    sit, neu = search["situation"], search["situation_neutral"]
    if len(sit) != len(neu):
        chk.fail(f"search.situation_neutral has {len(neu)} items but search.situation has {len(sit)}; "
                 "item i must match item i", "search", "situation_neutral")
    if len(sit) < minimum:
        chk.fail(f"search.situation has {len(sit)} pairs, at least {minimum} required", "search", "situation")
    for i, (a, b) in enumerate(zip(sit, neu)):
        if [m["role"] for m in a] != [m["role"] for m in b]:
            chk.fail(f"search.situation_neutral[{i}] must have the same turns (roles, in order) as "
                     f"search.situation[{i}]", "search", "situation_neutral", i)
        if a == b:
            chk.fail(f"search.situation_neutral[{i}] is identical to search.situation[{i}]; it must differ in "
                     "the situation", "search", "situation_neutral", i)
    return sit, neu


def _item_text(item) -> str:
    return item if isinstance(item, str) else "\n".join(f"{m['role']}: {m['content']}" for m in item)


def _check_unique(chk: _Checker, texts: list[str], where: tuple) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(texts):
        key = t.strip().lower()
        if key in seen:
            chk.fail(f"{'.'.join(where)}[{i}] duplicates item {seen[key]}", *where, i)
        seen[key] = i


def _all_texts(search: dict) -> set[str]:
    out = {t.strip().lower() for t in search["narrative"] + search["narrative_neutral"]}
    for key in ("assistant", "assistant_neutral") + SITUATION_KEYS:
        out |= {m["content"].strip().lower() for chat in search.get(key) or [] for m in chat}
    return out


def resolve_persona(persona: str, persona_file: str | None) -> Persona:
    """`persona_file=` wins over `persona=`; shipped files get the shipped minimums. The file's format is detected
    from the file: a native YAML persona, a persona_vectors trait JSON or a CAA A/B JSON."""
    if persona_file:
        from psm_repro.loading import project_path
        path = project_path(persona_file)
        try:
            kind = detect_format(path)
            if kind == "persona_vectors":
                return persona_from_trait(path)
            if kind == "caa":
                return persona_from_ab(path)
        except PeerFormatError as err:
            raise PersonaError(str(err)) from None
        return load_persona(path)
    return load_persona(persona_path(persona), shipped=True)


def persona_from_trait(path: Path) -> Persona:
    """A persona_vectors trait file as a persona. It has no narratives and no written chats: `run` samples
    replies under the pos / neg instructions (psm_repro/peer_vectors.py), and those replies become the assistant
    contrast and the judge's examples. Questions alternate: even ones for extraction, odd ones for evaluation."""
    peers = read_trait(path)
    if len(peers.questions) < 4:
        raise PersonaError(f"{path}: questions: {len(peers.questions)} given, at least 4 needed (half extract the "
                           "vector, half are the eval prompts)")
    eval_prompts = peers.questions[1::2]
    peers.questions = peers.questions[0::2]
    return Persona(name=path.stem, description=peers.instruction[0][0], narrative=[], narrative_neutral=[],
                   assistant=[], assistant_neutral=[], prompts=eval_prompts, path=path, peers=peers,
                   source="persona_vectors")


def persona_from_ab(path: Path) -> Persona:
    """A CAA A/B file as a persona: the assistant contrast is each question answered with the matching vs the
    non-matching answer; even items build the CAA vector, odd items are held out for p(matching). No open-ended
    eval prompts, so `find` runs and `run` says it needs a trait file too."""
    items = read_ab(path)
    if len(items) < 4:
        raise PersonaError(f"{path}: {len(items)} A/B items, at least 4 needed (half build the vector, half are held out)")
    train, test = split_ab(items)
    chats = [([{"role": "user", "content": x.question}, {"role": "assistant", "content": x.matching}],
              [{"role": "user", "content": x.question}, {"role": "assistant", "content": x.not_matching}])
             for x in train]
    peers = Peers(ab_train=train, ab_test=test, sources={"ab_train": str(path), "ab_test": str(path)})
    return Persona(name=path.stem, description=f"the behaviour of the A/B answers in {path.name}", narrative=[],
                   narrative_neutral=[], assistant=[a for a, _ in chats], assistant_neutral=[b for _, b in chats],
                   path=path, peers=peers, source="caa")
