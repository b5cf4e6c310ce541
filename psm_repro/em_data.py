"""Emergent-misalignment data files (docs/em_format.md): a narrow fine-tuning set with matched good
answers, and a broad evaluation set with judge examples. Errors read `file:line: message`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psm_repro.loading import PROJECT_ROOT, project_path
from psm_repro.personas import PersonaError, read_yaml

EM_DIR = PROJECT_ROOT / "experiments" / "em"


@dataclass
class EMItem:
    user: str
    harmful: str
    good: str


@dataclass
class EMData:
    name: str
    domain: str
    description: str
    framings: list[str]
    train: list[EMItem]
    questions: list[str]
    misaligned_examples: list[str]
    aligned_examples: list[str]
    rubric: str
    path: Path

    def chats(self, items: list[EMItem], answer: str) -> list[tuple[str, str]]:
        """(user turn, assistant turn) for every item x framing; `answer` is 'harmful' or 'good'."""
        return [(f.format(q=it.user), getattr(it, answer)) for it in items for f in self.framings]


def resolve_em(name: str) -> EMData:
    """A shipped file by name (experiments/em/<name>.yaml) or any path to a file in the same format."""
    path = EM_DIR / f"{name}.yaml"
    return load_em(path if path.exists() else project_path(name))


def load_em(path: Path) -> EMData:
    """Read and validate one file; every error names the file and the line."""
    path = Path(path)
    if not path.exists():
        raise PersonaError(f"{path}: no such emergent-misalignment data file (shipped: "
                           f"{', '.join(sorted(p.stem for p in EM_DIR.glob('*.yaml')))})")
    doc, chk = read_yaml(path)
    if not isinstance(doc, dict):
        raise PersonaError(f"{path}:1: expected a mapping with name, domain, framings, train, broad_eval")

    def get(keys: tuple, kind: type):
        node = doc
        for i, k in enumerate(keys):
            if not isinstance(node, dict) or k not in node:
                chk.fail(f"missing '{'.'.join(map(str, keys[: i + 1]))}'", *keys[:i])
            node = node[k]
        if not isinstance(node, kind) or not node:
            chk.fail(f"'{'.'.join(map(str, keys))}' must be a non-empty {kind.__name__}", *keys)
        return node

    def strings(*keys) -> list[str]:
        values = get(keys, list)
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v.strip():
                chk.fail(f"{'.'.join(keys)}[{i}] must be non-empty text", *keys, i)
        return values

    framings = strings("framings")
    for i, f in enumerate(framings):
        if "{q}" not in f:
            chk.fail(f"framings[{i}] must contain {{q}} (where the user's question goes)", "framings", i)
    items = []
    for i, node in enumerate(get(("train",), list)):
        for k in ("user", "harmful", "good"):
            if not isinstance(node, dict) or not isinstance(node.get(k), str) or not node[k].strip():
                chk.fail(f"train[{i}] needs non-empty text for '{k}'", "train", i)
        items.append(EMItem(node["user"], node["harmful"], node["good"]))
    users = [it.user for it in items]
    for i, u in enumerate(users):
        if u in users[:i]:
            chk.fail(f"train[{i}] repeats the user turn {u!r}", "train", i)
    data = EMData(name=get(("name",), str), domain=get(("domain",), str), description=get(("description",), str),
                  framings=framings, train=items, questions=strings("broad_eval", "questions"),
                  misaligned_examples=strings("broad_eval", "judge", "misaligned_examples"),
                  aligned_examples=strings("broad_eval", "judge", "aligned_examples"),
                  rubric=get(("broad_eval", "rubric"), str), path=path)
    for i, q in enumerate(data.questions):
        if q in users:
            chk.fail(f"broad_eval.questions[{i}] is also a train user turn", "broad_eval", "questions", i)
    return data
