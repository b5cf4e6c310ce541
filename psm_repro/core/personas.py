"""Persona files: loading and validation of the public extension format (docs/persona_format.md).

The rules live in one place and run twice: on a file, where a broken one is reported as `file:line: message` with
the line of the offending YAML node, and on every `Persona` built in memory (`Persona.validate`), where the message
names the persona and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from psm_repro.config.sections import MIN_EVAL_ITEMS, SPLIT_WHY
from psm_repro.core.outputs import read_input_text
from psm_repro.core.paths import PROJECT_ROOT
from psm_repro.core.persona_rules import (MIN_PAIRS, PAIRS_WHY, SEARCH_KEYS, SITUATION_KEYS, SOURCES, FieldReporter,
                                          Judge, Pair, PersonaError, all_texts, check_eval, check_paired)
from psm_repro.peers.formats import (PeerFormatError, Peers, detect_format, read_ab, read_peers_section, read_trait,
                                     split_ab)

PERSONA_DIR = PROJECT_ROOT / "experiments" / "personas"
Chat = list[dict[str, str]]


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
    """Ordinary chats with matched prose (psm_repro/pipeline/ordinary.py) on which the narrative latents are read."""
    situation: list[Chat] = field(default_factory=list)
    """User turns (and optional system turns) that put the assistant in the situation; no assistant text."""
    situation_neutral: list[Chat] = field(default_factory=list)
    """Item i matches situation[i]: the same turns, differing only in the situation."""
    peers: Peers | None = None
    """The peer methods' data (persona vector, CAA vector, A/B items), from the `peers` section or an imported file."""
    source: str = "native"
    """native (YAML persona), persona_vectors (trait JSON) or caa (A/B JSON)."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """The file format's rules on the fields (docs/persona_format.md); a broken one raises PersonaError in one
        line naming the persona (or its file) and the field. Imported files have no narratives; a trait file's
        assistant sets and judge examples are the model's own replies, filled in by `run` (psm_repro/peers/stage.py),
        so they are not checked here."""
        chk = FieldReporter(self)
        if not isinstance(self.name, str) or not self.name.strip():
            chk.fail("name: must be a non-empty string")
        if not isinstance(self.description, str) or not self.description.strip():
            chk.fail("description: must be a non-empty string")
        if self.source not in SOURCES:
            chk.fail(f"source: '{self.source}' is not one of {', '.join(SOURCES)}")
        written = self.source != "persona_vectors"  # else the assistant sets and judge examples are sampled replies
        check_paired(chk, "narrative", self.narrative, self.narrative_neutral, "text", self.source == "native")
        if written:
            check_paired(chk, "assistant", self.assistant, self.assistant_neutral, "chat", True)
        check_paired(chk, "situation", self.situation, self.situation_neutral, "situation", False)
        search = {"narrative": self.narrative, "narrative_neutral": self.narrative_neutral,
                  "assistant": self.assistant if written else [],
                  "assistant_neutral": self.assistant_neutral if written else [],
                  "situation": self.situation, "situation_neutral": self.situation_neutral}
        check_eval(chk, self.prompts, self.pairs, self.judge if written else None, all_texts(search))

    @property
    def has_eval(self) -> bool:
        return bool(self.prompts and self.judge)

    @property
    def has_narratives(self) -> bool:
        return bool(self.narrative)

    @classmethod
    def from_file(cls, path: str | Path) -> Persona:
        """A persona file in any supported format (native YAML, persona_vectors trait JSON, CAA A/B JSON), checked
        as `persona_file=` checks it; relative paths resolve as the CLI resolves them."""
        return resolve_persona("", str(path))

    @classmethod
    def shipped(cls, name: str) -> Persona:
        """A shipped persona (experiments/personas/<name>.yaml), with the shipped set-size minimums."""
        return resolve_persona(name, None)


def persona_path(name: str) -> Path:
    path = PERSONA_DIR / f"{name}.yaml"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in PERSONA_DIR.glob("*.yaml")))
        raise PersonaError(f"persona={name}: no file {path.relative_to(PROJECT_ROOT)} (shipped: {shipped})")
    return path


class _Checker:
    """Reports a broken rule in a file as `file:line: message`, at the YAML node the keys lead to."""

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
    """Parse a data file (UTF-8, BOM and CRLF welcome); a syntax error becomes `file:line: not valid YAML`."""
    text = read_input_text(path, PersonaError)
    try:
        return yaml.safe_load(text), _Checker(path, text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        tab = "\t" in text.split("\n")[line - 1] or "'\\t'" in str(getattr(err, "problem", ""))
        raise PersonaError(f"{path}:{line}: not valid YAML" + (" (a tab: YAML indents with spaces)" if tab else "")
                           ) from None


def load_persona(path: str | Path, shipped: bool = False) -> Persona:
    """Read and validate one persona file; `shipped=True` also enforces the shipped files' set sizes."""
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
    for key in SEARCH_KEYS:
        if key not in search:
            chk.fail(f"missing section 'search.{key}'", "search")
    check_paired(chk, "narrative", search["narrative"], search["narrative_neutral"], "text", True, shipped)
    check_paired(chk, "assistant", search["assistant"], search["assistant_neutral"], "chat", True, shipped)
    present = [k for k in SITUATION_KEYS if k in search]
    if len(present) == 1:
        missing = SITUATION_KEYS[1 - SITUATION_KEYS.index(present[0])]
        chk.fail(f"search.{present[0]} needs its matched search.{missing}", "search", present[0])
    if present:
        check_paired(chk, "situation", search["situation"], search["situation_neutral"], "situation", True, shipped)
    fields = {"name": data["name"], "description": data["description"], "path": path,
              **{k: search[k] for k in SEARCH_KEYS + tuple(present)}}
    if "peers" in data:
        try:
            fields["peers"] = read_peers_section(path, data["peers"], chk.fail)
        except PeerFormatError as err:
            raise PersonaError(str(err)) from None
    if "ordinary" in data:
        ordinary = PROJECT_ROOT / "experiments" / str(data["ordinary"])
        if not ordinary.is_file():
            chk.fail(f"ordinary: no file {ordinary} (a path under experiments/)", "ordinary")
        fields["ordinary"] = ordinary
    ev = data.get("eval")
    if ev is None and shipped:
        chk.fail("missing section 'eval'")
    if ev is not None:
        fields |= _read_eval(chk, ev, all_texts(search), shipped)
    return Persona(**fields)  # Persona.validate runs the same rules again, on the fields


def _read_eval(chk: _Checker, ev, search_texts: set[str], shipped: bool) -> dict:
    """The `eval` section's structure (keys and types), then the eval rules shared with Persona.validate."""
    if not isinstance(ev, dict):
        chk.fail("eval must be a mapping", "eval")
    for key in ("prompts", "pairs", "judge"):
        if key not in ev:
            chk.fail(f"missing section 'eval.{key}'", "eval")
    for key in ("prompts", "pairs"):
        if not isinstance(ev[key], list) or not ev[key]:
            chk.fail(f"eval.{key} must be a non-empty list", "eval", key)
    pairs = []
    for i, p in enumerate(ev["pairs"]):
        if not isinstance(p, dict) or set(p) != {"prompt", "trait", "neutral"}:
            chk.fail(f"eval.pairs[{i}] must have exactly the keys prompt, trait, neutral", "eval", "pairs", i)
        pairs.append(Pair(**p))
    judge = ev["judge"]
    if not isinstance(judge, dict) or set(judge) != {"rubric", "trait_examples", "neutral_examples"}:
        chk.fail("eval.judge must have exactly the keys rubric, trait_examples, neutral_examples", "eval", "judge")
    judge = Judge(judge["rubric"], judge["trait_examples"], judge["neutral_examples"])
    check_eval(chk, ev["prompts"], pairs, judge, search_texts, shipped)
    return {"prompts": ev["prompts"], "pairs": pairs, "judge": judge}


def resolve_persona(persona: str, persona_file: str | None) -> Persona:
    """`persona_file=` wins over `persona=`; shipped files get the shipped minimums. The file's format is detected
    from the file: a native YAML persona, a persona_vectors trait JSON or a CAA A/B JSON."""
    if persona_file:
        from psm_repro.core.paths import project_path
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
    replies under the pos / neg instructions (psm_repro/peers/vectors.py), and those replies become the assistant
    contrast and the judge's examples. Questions alternate: even ones for extraction, odd ones for evaluation."""
    peers = read_trait(path)
    if len(peers.questions) < 2 * MIN_EVAL_ITEMS:
        raise PersonaError(f"{path}: questions: {len(peers.questions)} given, at least {2 * MIN_EVAL_ITEMS} needed "
                           f"(half extract the vector, half are the eval prompts, and {SPLIT_WHY})")
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
    if len(items) < 2 * MIN_PAIRS:
        raise PersonaError(f"{path}: {len(items)} A/B items, at least {2 * MIN_PAIRS} needed (half build the vector "
                           f"and the assistant contrast the finder tests, half are held out; {PAIRS_WHY})")
    train, test = split_ab(items)
    chats = [([{"role": "user", "content": x.question}, {"role": "assistant", "content": x.matching}],
              [{"role": "user", "content": x.question}, {"role": "assistant", "content": x.not_matching}])
             for x in train]
    peers = Peers(ab_train=train, ab_test=test, sources={"ab_train": str(path), "ab_test": str(path)})
    return Persona(name=path.stem, description=f"the behaviour of the A/B answers in {path.name}", narrative=[],
                   narrative_neutral=[], assistant=[a for a, _ in chats], assistant_neutral=[b for _, b in chats],
                   path=path, peers=peers, source="caa")
