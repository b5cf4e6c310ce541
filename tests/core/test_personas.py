import re

import pytest
import yaml
from conftest import write_persona

from psm_repro.core.personas import PERSONA_DIR, Judge, Persona, PersonaError, load_persona, resolve_persona

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


# --------------------------------------------------------------- sets too small for the statistics (any file)

def _node_line(path, *keys) -> int:
    """The 1-based line of the YAML node at `keys` (mapping keys and list indices)."""
    node = yaml.compose(path.read_text())
    for key in keys:
        node = dict((k.value, v) for k, v in node.value)[key] if isinstance(key, str) else node.value[key]
    return node.start_mark.line + 1


def _shrink(*keys, n):
    def edit(d):
        for k in keys:
            section = d["eval"] if k in ("prompts", "pairs") else d["search"]
            del section[k][n:]
    return edit


SIZE_CASES = {
    "too few narrative pairs": (_shrink("narrative", "narrative_neutral", n=7),
                                r"search.narrative has 7 items, at least 8 required \(the finder's paired sign-flip "
                                r"test gives p >= 2\^-n over n pairs, .* each half of its stability split keeps n/2\)",
                                ("search", "narrative")),
    "too few assistant pairs": (_shrink("assistant", "assistant_neutral", n=5),
                                r"search.assistant has 5 items, at least 8 required \(the finder's paired",
                                ("search", "assistant")),
    "too few eval prompts": (_shrink("prompts", n=3),
                             r"eval.prompts has 3 items, at least 4 required \(eval prompts: they alternate into a dev "
                             r"and a test half, and each half needs 2 for its BCa interval and paired test\)",
                             ("eval", "prompts")),
    "too few eval pairs": (_shrink("pairs", n=2), r"eval.pairs has 2 items, at least 4 required \(eval pairs: they",
                           ("eval", "pairs")),
}


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_sets_too_small_for_the_statistics_fail_with_file_line_and_why(tmp_path, case):
    mutate, pattern, keys = SIZE_CASES[case]
    path = _mutate(tmp_path, mutate)
    with pytest.raises(PersonaError) as err:
        load_persona(path)
    msg = str(err.value)
    assert re.search(pattern, msg) and "\n" not in msg, msg
    assert msg.startswith(f"{path}:{_node_line(path, *keys)}: "), msg


def test_eight_pairs_and_four_eval_prompts_are_enough(tmp_path):
    path = _mutate(tmp_path, lambda d: (_shrink("narrative", "narrative_neutral", "assistant", "assistant_neutral",
                                                n=8)(d), _shrink("prompts", "pairs", n=4)(d)))
    p = load_persona(path)
    assert len(p.narrative) == len(p.assistant) == 8 and len(p.prompts) == len(p.pairs) == 4


def test_imported_files_too_small_for_the_statistics_name_the_file(tmp_path):
    import json

    from psm_repro.core.personas import persona_from_ab, persona_from_trait

    trait = {"instruction": [{"pos": "Be evil.", "neg": "Be kind."}], "questions": [f"q{i}?" for i in range(7)],
             "eval_prompt": "Rate it. {question} {answer}"}
    (tmp_path / "t.json").write_text(json.dumps(trait))
    with pytest.raises(PersonaError, match=r"t\.json: questions: 7 given, at least 8 needed \(half extract the "
                                           r"vector, half are the eval prompts, and they alternate into a dev and"):
        persona_from_trait(tmp_path / "t.json")
    ab = [{"question": f"q{i}? (A) yes (B) no", "answer_matching_behavior": "(A)",
           "answer_not_matching_behavior": "(B)"} for i in range(15)]
    (tmp_path / "ab.json").write_text(json.dumps(ab))
    with pytest.raises(PersonaError, match=r"ab\.json: 15 A/B items, at least 16 needed \(half build the vector and "
                                           r"the assistant contrast the finder tests"):
        persona_from_ab(tmp_path / "ab.json")
    trait["questions"].append("q7?")
    (tmp_path / "t.json").write_text(json.dumps(trait))
    assert len(persona_from_trait(tmp_path / "t.json").prompts) == 4


# --------------------------------------------------------------- chat shapes, in every chat set, with file:line

CHAT_SETS = ("assistant", "assistant_neutral", "situation", "situation_neutral")


def _turn(d, key, i, j):
    return d["search"][key][i][j]


def _no_user_turn_first(d, key):
    """A chat whose first non-system turn is the assistant's; a situation (no assistant turns): system turns only."""
    first = [{"role": "system", "content": "Be calm ."}] + (
        [] if key.startswith("situation") else [{"role": "assistant", "content": "I start ."}])
    d["search"][key][2] = first + [t for t in d["search"][key][2] if t["role"] != "system"][1:]


CHAT_CASES = {
    "starts with an assistant turn": (
        _no_user_turn_first, r"search\.{k}\[2\]: must start with a user turn \(after optional system turns\)", 2),
    "role is a number": (lambda d, k: _turn(d, k, 2, 0).__setitem__("role", 3),
                         r"search\.{k}\[2\]\[0\]: role must be a string \(assistant, system, user\), got int 3",
                         (2, 0)),
    "role is a list": (lambda d, k: _turn(d, k, 2, 0).__setitem__("role", ["user"]),
                       r"search\.{k}\[2\]\[0\]: role must be a string .*got list", (2, 0)),
    "content is a list": (lambda d, k: _turn(d, k, 2, 0).__setitem__("content", ["a", "b"]),
                          r"search\.{k}\[2\]\[0\]: content must be a non-empty string, got list", (2, 0)),
}


@pytest.mark.parametrize("key", CHAT_SETS)
@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_malformed_chats_fail_with_file_line_in_every_chat_set(tmp_path, key, case):
    mutate, pattern, at = CHAT_CASES[case]
    path = _mutate(tmp_path, lambda d: mutate(d, key), situations=True)
    with pytest.raises(PersonaError) as err:
        load_persona(path)
    msg = str(err.value)
    assert re.search(pattern.format(k=key), msg) and "\n" not in msg, msg
    # the line of the offending chat (or of its turn)
    assert msg.startswith(f"{path}:{_node_line(path, 'search', key, *((at,) if isinstance(at, int) else at))}: "), msg


def test_a_chat_opening_with_system_turns_then_a_user_turn_is_fine(tmp_path):
    head = [{"role": "system", "content": "Be brief ."}, {"role": "system", "content": "Be kind ."}]

    def two_system_turns(d):
        for key in ("assistant", "assistant_neutral"):
            d["search"][key][1][:0] = head
    assert load_persona(_mutate(tmp_path, two_system_turns)).assistant[1][:2] == head


# --------------------------------------------------------------- a Persona built in memory: the same rules

def _fields(tmp_path) -> dict:
    """A valid persona's fields, as a notebook would pass them to Persona(...)."""
    import dataclasses

    p = load_persona(write_persona(tmp_path, situations=True))
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)} | {"path": None}


MEMORY_CASES = {
    "starts with an assistant turn": (
        lambda p: {"assistant": [c if i != 2 else c[-1:] for i, c in enumerate(p["assistant"])]},
        "Persona 'planted': search.assistant[2]: must start with a user turn (after optional system turns)"),
    "role is a number": (
        lambda p: {"situation_neutral": [c if i != 1 else [{"role": 3, "content": "hi ?"}]
                                         for i, c in enumerate(p["situation_neutral"])]},
        "Persona 'planted': search.situation_neutral[1][0]: role must be a string (assistant, system, user), "
        "got int 3"),
    "content is a list": (
        lambda p: {"assistant_neutral": [c if i != 4 else c[:-1] + [{"role": "assistant", "content": ["x"]}]
                                         for i, c in enumerate(p["assistant_neutral"])]},
        "Persona 'planted': search.assistant_neutral[4][1]: content must be a non-empty string, got list ['x']"),
    "too few narratives": (lambda p: {"narrative": p["narrative"][:6], "narrative_neutral": p["narrative_neutral"][:6]},
                           "Persona 'planted': search.narrative has 6 items, at least 8 required (the finder's"),
    "unmatched narratives": (lambda p: {"narrative_neutral": p["narrative_neutral"][:-1]},
                             "Persona 'planted': search.narrative_neutral has 11 items but search.narrative has 12"),
    "situation without its neutral set": (lambda p: {"situation_neutral": []},
                                          "Persona 'planted': search.situation needs its matched "
                                          "search.situation_neutral"),
    "too few eval prompts": (lambda p: {"prompts": p["prompts"][:3]},
                             "Persona 'planted': eval.prompts has 3 items, at least 4 required (eval prompts: they "
                             "alternate into a dev and a test half"),
    "a pair as a dict": (lambda p: {"pairs": [{"prompt": "a", "trait": "b", "neutral": "c"}] + p["pairs"][1:]},
                         "Persona 'planted': eval.pairs[0] must be a Pair(prompt, trait, neutral), got dict"),
    "empty judge examples": (lambda p: {"judge": Judge("Does it?", [], ["no"])},
                             "Persona 'planted': eval.judge.trait_examples must be a non-empty list of strings"),
    "eval overlaps search": (lambda p: {"prompts": [p["narrative"][0]] + p["prompts"][1:]},
                             "Persona 'planted': eval.prompts repeats a search item"),
    "no description": (lambda p: {"description": " "}, "Persona 'planted': description: must be a non-empty string"),
    "unknown source": (lambda p: {"source": "csv"}, "Persona 'planted': source: 'csv' is not one of native, "
                                                    "persona_vectors, caa"),
}


@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_a_persona_built_in_memory_is_validated_by_the_same_rules(tmp_path, case):
    change, message = MEMORY_CASES[case]
    kw = _fields(tmp_path)
    with pytest.raises(PersonaError) as err:
        Persona(**(kw | change(kw)))
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_the_legitimate_shapes_still_construct(tmp_path):
    import dataclasses

    from psm_repro.core.personas import persona_from_ab, persona_from_trait

    kw = _fields(tmp_path)
    p = Persona(**kw)
    assert p.name == "planted" and len(p.situation) == 12
    assert Persona(**(kw | {"prompts": [], "pairs": [], "judge": None, "situation": [], "situation_neutral": []}))
    peers = PERSONA_DIR / "peers"
    trait = persona_from_trait(peers / "panic.json")  # no narratives, no chats yet: sampled by `run`
    assert trait.source == "persona_vectors" and not trait.assistant and len(trait.prompts) == 12
    filled = dataclasses.replace(trait, assistant=[[{"role": "user", "content": "q ?"},
                                                    {"role": "assistant", "content": "a"}]] * 2,
                                 judge=Judge("rubric", [], []))  # the run's own replies, not checked
    assert filled.judge.trait_examples == []
    ab = persona_from_ab(peers / "panic_ab_test.json")  # assistant-only: even items as user/assistant chats
    assert ab.source == "caa" and not ab.narrative and len(ab.assistant) == 26
    with pytest.raises(PersonaError, match=r"panic_ab_test\.json: search\.assistant\[1\]: must start with a user"):
        dataclasses.replace(ab, assistant=[ab.assistant[0], ab.assistant[1][1:]] + ab.assistant[2:])


def test_a_persona_file_saved_on_windows_reads_as_the_same_persona(tmp_path):
    """CRLF line ends and a UTF-8 byte-order mark (what Notepad writes) change nothing that is read."""
    (tmp_path / "unix").mkdir()
    unix = write_persona(tmp_path / "unix", n=12)
    win = tmp_path / "win" / unix.name
    win.parent.mkdir()
    win.write_bytes(b"\xef\xbb\xbf" + unix.read_bytes().replace(b"\n", b"\r\n"))
    a, b = load_persona(unix), load_persona(win)
    assert (a.name, a.prompts, a.pairs, a.assistant, a.narrative) == (b.name, b.prompts, b.pairs, b.assistant,
                                                                      b.narrative)
    assert all("\r" not in t for chat in b.assistant for m in chat for t in m["content"])


def test_tabs_and_bytes_that_are_not_utf8_are_one_line_naming_file_and_line(tmp_path):
    path = write_persona(tmp_path, n=12)
    lines = path.read_text().split("\n")
    tabbed = lines[:4] + ["\t" + lines[4]] + lines[5:]
    path.write_text("\n".join(tabbed))
    with pytest.raises(PersonaError, match=rf"{re.escape(str(path))}:5: not valid YAML \(a tab: YAML indents with "
                                           "spaces\\)"):
        load_persona(path)
    raw = "\n".join(lines).encode()
    third = raw.index(b"\n", raw.index(b"\n") + 1) + 1  # the start of line 3
    path.write_bytes(raw[:third + 2] + b"\xe9" + raw[third + 2:])  # a Latin-1 "e acute"
    with pytest.raises(PersonaError, match=rf"{re.escape(str(path))}:3: not valid UTF-8 \(byte 0xe9\)"):
        load_persona(path)


def test_a_jsonl_input_with_a_bom_and_crlf_reads_line_for_line(tmp_path):
    from psm_repro.core.outputs import read_jsonl

    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": "x"}\r\n\r\n{"a": "y\\r"}\r\n')
    assert read_jsonl(path) == [(1, {"a": "x"}), (3, {"a": "y\r"})]  # an escaped \r in a value is kept
