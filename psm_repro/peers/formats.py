"""The peers' persona files, read as they are: persona_vectors trait JSON and CAA A/B JSON.

* persona_vectors / assistant-axis trait JSON (Chen et al. 2025): a mapping with `instruction` (a list of
  `{pos, neg}` system prompts that ask for the trait and for its opposite), `questions` (user questions the
  replies are sampled on) and `eval_prompt` (an LLM judge template with `{question}` and `{answer}`).
* CAA A/B JSON (Rimsky et al. 2024): a list of `{question, answer_matching_behavior,
  answer_not_matching_behavior}`; the answers are usually "(A)" / "(B)", with the choices in the question.

`detect_format` tells the formats apart from the file itself; `persona_file=` accepts either of them, or a
native YAML persona, which may name such files in its `peers` section (docs/persona_format.md). Every
error is one line naming the file, the item index and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from psm_repro.core.outputs import read_input_text

TRAIT_KEYS = ("instruction", "questions", "eval_prompt")
AB_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
LETTER = re.compile(r"^\(([A-Za-z])\)$")


class PeerFormatError(ValueError):
    """A peer-format file is malformed; the message names the file, the item and the field."""


@dataclass
class ABItem:
    """One multiple-choice item: the question (choices included) and the two answers."""

    question: str
    matching: str
    not_matching: str

    def answers(self) -> tuple[str, str]:
        """The answer texts that are scored. "(A)" / "(B)" are scored as "(A" / "(B": the letter read after the
        opening parenthesis, as CAA reads it (the closing parenthesis would add a term CAA does not have)."""
        if LETTER.match(self.matching) and LETTER.match(self.not_matching):
            return self.matching[:-1], self.not_matching[:-1]
        return self.matching, self.not_matching


@dataclass
class Peers:
    """What the peer methods need: system-prompt pairs and questions (persona vector), A/B items (CAA)."""

    instruction: list[tuple[str, str]] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    eval_prompt: str = ""
    ab_train: list[ABItem] = field(default_factory=list)
    """A/B items the CAA vector is built from."""
    ab_test: list[ABItem] = field(default_factory=list)
    """Held-out A/B items the p(matching) metric is measured on."""
    sources: dict[str, str] = field(default_factory=dict)
    """Which file each part came from, for the card."""

    @property
    def has_vector_data(self) -> bool:
        return bool(self.instruction and self.questions)


def _load_json(path: Path):
    try:
        return json.loads(read_input_text(path, PeerFormatError))
    except json.JSONDecodeError as err:
        raise PeerFormatError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def detect_format(path: Path) -> str:
    """'native' (YAML persona), 'persona_vectors' (trait JSON) or 'caa' (A/B JSON); anything else is an error."""
    if not path.exists():
        raise PeerFormatError(f"{path}: persona file not found")
    if path.suffix in (".yaml", ".yml"):
        return "native"
    if path.suffix != ".json":
        raise PeerFormatError(f"{path}: unknown persona file type '{path.suffix}' (expected .yaml, or .json in the "
                              "persona_vectors trait or CAA A/B format; docs/persona_format.md)")
    data = _load_json(path)
    if isinstance(data, dict) and "instruction" in data:
        return "persona_vectors"
    if isinstance(data, list) and data and isinstance(data[0], dict) and "answer_matching_behavior" in data[0]:
        return "caa"
    raise PeerFormatError(f"{path}: not a known persona format: expected a persona_vectors trait JSON (a mapping "
                          f"with {', '.join(TRAIT_KEYS)}) or a CAA A/B JSON (a list of {', '.join(AB_KEYS)})")


def _text(path: Path, where: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PeerFormatError(f"{path}: {where}: must be a non-empty string")
    return value


def read_trait(path: Path) -> Peers:
    """A persona_vectors / assistant-axis trait file."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise PeerFormatError(f"{path}: a trait file is a mapping with {', '.join(TRAIT_KEYS)}")
    for key in TRAIT_KEYS:
        if key not in data:
            raise PeerFormatError(f"{path}: missing field '{key}'")
    for key in ("instruction", "questions"):
        if not isinstance(data[key], list) or not data[key]:
            raise PeerFormatError(f"{path}: {key}: must be a non-empty list")
    instruction = []
    for i, pair in enumerate(data["instruction"]):
        if not isinstance(pair, dict):
            raise PeerFormatError(f"{path}: instruction[{i}]: must be a mapping with pos, neg")
        for key in ("pos", "neg"):
            if key not in pair:
                raise PeerFormatError(f"{path}: instruction[{i}]: missing field '{key}'")
            _text(path, f"instruction[{i}].{key}", pair[key])
        instruction.append((pair["pos"], pair["neg"]))
    questions = [_text(path, f"questions[{i}]", q) for i, q in enumerate(data["questions"])]
    eval_prompt = _text(path, "eval_prompt", data["eval_prompt"])
    return Peers(instruction=instruction, questions=questions, eval_prompt=eval_prompt,
                 sources={"instruction": str(path), "questions": str(path)})


def read_ab(path: Path) -> list[ABItem]:
    """A CAA A/B file: answers are "(A)"-style letters or, failing that, any non-empty strings."""
    data = _load_json(path)
    if not isinstance(data, list) or not data:
        raise PeerFormatError(f"{path}: an A/B file is a non-empty list of {{{', '.join(AB_KEYS)}}}")
    return [ab_item(path, f"item {i}", item) for i, item in enumerate(data)]


def ab_item(path: Path, where: str, item) -> ABItem:
    if not isinstance(item, dict):
        raise PeerFormatError(f"{path}: {where}: must be a mapping with {', '.join(AB_KEYS)}")
    for key in AB_KEYS:
        if key not in item:
            raise PeerFormatError(f"{path}: {where}: missing field '{key}'")
        _text(path, f"{where}: {key}", item[key])
    out = ABItem(item["question"], item["answer_matching_behavior"], item["answer_not_matching_behavior"])
    if out.matching.strip() == out.not_matching.strip():
        raise PeerFormatError(f"{path}: {where}: answer_matching_behavior and answer_not_matching_behavior are the "
                              "same answer")
    return out


def split_ab(items: list[ABItem]) -> tuple[list[ABItem], list[ABItem]]:
    """One A/B file with no separate test file: even items build the CAA vector, odd items are held out."""
    return items[0::2], items[1::2]


def read_peers_section(path: Path, section, fail) -> Peers:
    """A native persona's `peers` section: `trait` (a trait JSON), or inline `instruction` / `questions` /
    `eval_prompt`; `ab_train` and `ab_test` (CAA A/B JSON files, or inline lists). File paths are relative to
    the persona file. `fail(msg, *keys)` reports an error at the YAML line of the section."""
    if not isinstance(section, dict):
        fail("peers must be a mapping", "peers")
    unknown = set(section) - {"trait", "ab_train", "ab_test", *TRAIT_KEYS}
    if unknown:
        fail(f"peers: unknown field(s) {sorted(unknown)} (expected trait, instruction, questions, eval_prompt, "
             "ab_train, ab_test)", "peers")
    peers = Peers()
    if "trait" in section:
        peers = read_trait(_relative(path, section["trait"], "peers.trait", fail))
    elif any(k in section for k in TRAIT_KEYS):
        peers = read_trait_inline(path, {k: section.get(k) for k in TRAIT_KEYS}, fail)
    for key in ("ab_train", "ab_test"):
        value = section.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            file = _relative(path, value, f"peers.{key}", fail)
            setattr(peers, key, read_ab(file))
            peers.sources[key] = str(file)
        elif isinstance(value, list) and value:
            setattr(peers, key, [ab_item(path, f"peers.{key}[{i}]", x) for i, x in enumerate(value)])
            peers.sources[key] = str(path)
        else:
            fail(f"peers.{key} must be a file path or a non-empty list of A/B items", "peers", key)
    return peers


def read_trait_inline(path: Path, data: dict, fail) -> Peers:
    for key in TRAIT_KEYS:
        if data[key] is None:
            fail(f"peers.{key}: missing (inline trait data needs {', '.join(TRAIT_KEYS)})", "peers")
    tmp = {"instruction": data["instruction"], "questions": data["questions"], "eval_prompt": data["eval_prompt"]}
    peers = _check_trait(path, tmp)
    peers.sources = {"instruction": str(path), "questions": str(path)}
    return peers


def _check_trait(path: Path, data: dict) -> Peers:
    for key in ("instruction", "questions"):
        if not isinstance(data[key], list) or not data[key]:
            raise PeerFormatError(f"{path}: peers.{key}: must be a non-empty list")
    instruction = []
    for i, pair in enumerate(data["instruction"]):
        if not isinstance(pair, dict) or set(pair) != {"pos", "neg"}:
            raise PeerFormatError(f"{path}: peers.instruction[{i}]: must have exactly the fields pos, neg")
        instruction.append((_text(path, f"peers.instruction[{i}].pos", pair["pos"]),
                            _text(path, f"peers.instruction[{i}].neg", pair["neg"])))
    questions = [_text(path, f"peers.questions[{i}]", q) for i, q in enumerate(data["questions"])]
    return Peers(instruction=instruction, questions=questions,
                 eval_prompt=_text(path, "peers.eval_prompt", data["eval_prompt"]))


def _relative(persona_path: Path, value, where: str, fail) -> Path:
    if not isinstance(value, str) or not value.strip():
        fail(f"{where} must be a file path", *where.split("."))
    file = (persona_path.parent / value).resolve()
    if not file.is_file():
        fail(f"{where}: no file {file}", *where.split("."))
    return file
