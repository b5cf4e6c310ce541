import re

import pytest
import yaml

from psm_repro.personas import PERSONA_DIR, PersonaError, load_persona, resolve_persona
from conftest import write_persona

SHIPPED = sorted(PERSONA_DIR.glob("*.yaml"))
TRAITS = {"inner_conflict", "secrecy", "panic", "sycophancy", "sarcasm", "toxic_persona", "ai_entity"}


def test_every_trait_has_a_shipped_file():
    assert {p.stem for p in SHIPPED} >= TRAITS


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_persona_validates(path):
    p = load_persona(path, shipped=True)
    assert len(p.narrative) >= 40 and len(p.assistant) >= 40 and len(p.prompts) >= 30 and len(p.pairs) >= 30
    assert len(p.judge.trait_examples) >= 30 and len(p.judge.neutral_examples) >= 30


def _mutate(tmp_path, fn):
    src = write_persona(tmp_path)
    data = yaml.safe_load(src.read_text())
    fn(data)
    src.write_text(yaml.safe_dump(data, sort_keys=False))
    return src


def _line_of(path, needle):
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(needle)


CASES = {
    "missing section": (lambda d: d.pop("search"), r"missing section 'search'"),
    "missing subsection": (lambda d: d["search"].pop("assistant_neutral"), r"missing section 'search.assistant_neutral'"),
    "empty list": (lambda d: d["search"].__setitem__("narrative", []), r"search.narrative must be a non-empty list"),
    "unknown role": (lambda d: d["search"]["assistant"][2][0].__setitem__("role", "narrator"), r"unknown role 'narrator'"),
    "duplicate item": (lambda d: d["search"]["narrative"].__setitem__(3, d["search"]["narrative"][1]),
                       r"search.narrative\[3\] duplicates item 1"),
    "search/eval overlap": (lambda d: d["eval"]["prompts"].__setitem__(0, d["search"]["narrative"][0]),
                            r"search/eval overlap"),
    "unmatched neutral turns": (lambda d: d["search"]["assistant_neutral"][0][0].__setitem__("content", "other ?"),
                                r"same user/system turns"),
    "wrong name": (lambda d: d.__setitem__("name", "other"), r"must equal the file name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_file_gets_a_file_line_message(tmp_path, case):
    mutate, pattern = CASES[case]
    path = _mutate(tmp_path, mutate)
    with pytest.raises(PersonaError) as err:
        load_persona(path)
    msg = str(err.value)
    assert re.search(pattern, msg), msg
    assert re.match(rf"{re.escape(str(path))}:\d+: ", msg), msg
    assert "\n" not in msg


def test_the_reported_line_points_at_the_offending_item(tmp_path):
    path = _mutate(tmp_path, lambda d: d["search"]["assistant"][2][0].__setitem__("role", "narrator"))
    with pytest.raises(PersonaError) as err:
        load_persona(path)
    assert f":{_line_of(path, 'role: narrator')}:" in str(err.value)


def test_shipped_minimums_apply_only_to_shipped_files(tmp_path):
    path = write_persona(tmp_path, n=12)
    assert load_persona(path).name == "planted"
    with pytest.raises(PersonaError, match="at least 40 required"):
        load_persona(path, shipped=True)


def test_unknown_persona_name_lists_the_shipped_ones():
    with pytest.raises(PersonaError, match=r"persona=nope: .*shipped: .*secrecy"):
        resolve_persona("nope", None)


def test_persona_file_without_eval_is_fine_for_find(tmp_path):
    p = load_persona(write_persona(tmp_path, with_eval=False))
    assert not p.has_eval
