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


def _mutate(tmp_path, fn, situations=False):
    src = write_persona(tmp_path, situations=situations)
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


SITUATION_CASES = {
    "assistant turn in a situation": (
        lambda d: d["search"]["situation"][2].append({"role": "assistant", "content": "I panic."}),
        r"search.situation\[2\]\[1\]: role 'assistant': a situation item holds only system and user turns"),
    "unmatched situation pairs": (lambda d: d["search"]["situation_neutral"].pop(),
                                  r"search.situation_neutral has 11 items but search.situation has 12"),
    "too few situation pairs": (lambda d: [d["search"][k].__delitem__(slice(5, None))
                                           for k in ("situation", "situation_neutral")],
                                r"search.situation has 5 pairs, at least 8 required"),
    "identical situation twins": (
        lambda d: d["search"]["situation_neutral"].__setitem__(4, d["search"]["situation"][4]),
        r"search.situation_neutral\[4\] is identical to search.situation\[4\]"),
    "situation without its neutral set": (lambda d: d["search"].pop("situation_neutral"),
                                          r"search.situation needs its matched search.situation_neutral"),
    "situation roles differ": (
        lambda d: d["search"]["situation_neutral"][3].insert(0, {"role": "system", "content": "Be brief ."}),
        r"search.situation_neutral\[3\] must have the same turns"),
    "situation ends with a system turn": (
        lambda d: d["search"]["situation"][1].append({"role": "system", "content": "Be brief ."}),
        r"search.situation\[1\] must end with a user turn"),
}


@pytest.mark.parametrize("case", sorted(CASES) + sorted(SITUATION_CASES))
def test_malformed_file_gets_a_file_line_message(tmp_path, case):
    mutate, pattern = CASES.get(case) or SITUATION_CASES[case]
    path = _mutate(tmp_path, mutate, situations=case in SITUATION_CASES)
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


def test_situation_errors_point_at_the_offending_item(tmp_path):
    path = _mutate(tmp_path, lambda d: d["search"]["situation"][2].append({"role": "assistant", "content": "I panic."}),
                   situations=True)
    with pytest.raises(PersonaError) as err:
        load_persona(path)
    assert f":{_line_of(path, 'I panic.') - 1}:" in str(err.value)  # the line of the turn's role key


def test_situation_sets_load_and_shipped_files_need_forty_pairs(tmp_path):
    p = load_persona(write_persona(tmp_path, situations=True))
    assert len(p.situation) == len(p.situation_neutral) == 12
    assert all(t["role"] != "assistant" for chat in p.situation + p.situation_neutral for t in chat)
    path = write_persona(tmp_path, n=40, situations=True)
    with pytest.raises(PersonaError, match="eval.prompts has 6 items"):  # 40 pairs pass; the next check fails
        load_persona(path, shipped=True)
    data = yaml.safe_load(path.read_text())
    for k in ("situation", "situation_neutral"):
        data["search"][k] = data["search"][k][:39]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PersonaError, match="search.situation has 39 pairs, at least 40 required"):
        load_persona(path, shipped=True)


SITUATED = ("panic", "secrecy", "inner_conflict", "sycophancy", "toxic_persona", "ai_entity")


@pytest.mark.parametrize("name", SITUATED)
def test_shipped_personas_with_a_situation_carry_at_least_forty_pairs(name):
    assert len(load_persona(PERSONA_DIR / f"{name}.yaml", shipped=True).situation) >= 40


def test_persona_file_without_eval_is_fine_for_find(tmp_path):
    p = load_persona(write_persona(tmp_path, with_eval=False))
    assert not p.has_eval
