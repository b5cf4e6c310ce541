"""build-corpus on the tiny model: token-id shards, manifest counts and hashes, resuming, the overlap filter."""

import json

import pytest

from psm_repro.config import CorpusConfig
from psm_repro.sae_training.corpus_build import CorpusError, build, load_shard
from psm_repro.sae_training.corpus_prompts import seed_prompts
from psm_repro.sae_training.overlap import ngrams, shared

PLAYS = {"hamlet_gut": "the night was cold and she kept the secret", "sonnets_gut": "a river a house a garden",
         "julius_caesar_gut_f": "they asked and he answered quietly"}


def _cfg(**kw):
    return CorpusConfig(**({"generated_docs": 12, "chunk_docs": 5, "max_new_tokens": 6, "heldout_every": 4,
                            "heldout_works": ["julius_caesar"], "generation_dtype": "float32"} | kw))


def _build(tiny_model, out, experiments, **kw):
    return build(tiny_model, _cfg(**kw), 0, out, experiments, shakespeare_texts=lambda: PLAYS)


def test_build_writes_shards_whose_counts_and_hashes_the_manifest_records(tiny_model, tmp_path):
    (tmp_path / "exp").mkdir()
    m = _build(tiny_model, tmp_path / "c", tmp_path / "exp")
    assert m["complete"] and [s["file"] for s in m["shards"]] == [
        "generated-00000.safetensors", "generated-00001.safetensors", "generated-00002.safetensors",
        "shakespeare.safetensors"]
    docs = [d for s in m["shards"] for d in load_shard(tmp_path / "c" / s["file"])[0]]
    assert sum(s["docs"] for s in m["shards"]) == len(docs) == 12 + 3
    for name in ("narrative", "chats", "shakespeare"):
        mine = [d for d in docs if d.slice == name]
        sl = m["slices"][name]
        assert sl["docs"] + sl["heldout_docs"] == len(mine)
        assert sl["tokens"] + sl["heldout_tokens"] == sum(len(d.ids) for d in mine)
    held = sorted(d.prompt_index for d in docs if d.slice != "shakespeare" and d.prompt_index % 4 == 0)
    assert held == [0, 4, 8]
    assert m["slices"]["shakespeare"]["heldout_docs"] == 1  # julius_caesar, by work name
    # a chat is stored as the template lays it out, the reply as plain text tokens
    tok = tiny_model.tokenizer
    kinds = dict((i, k) for i, (k, _) in enumerate(seed_prompts(12, 0, 0.5)))
    for d in docs:
        if d.slice != "shakespeare":
            assert d.slice == kinds[d.prompt_index]
            assert (d.ids[0] == tok.bos_token_id) == (d.slice == "chats")
    assert json.loads((tmp_path / "c" / "manifest.json").read_text()) == m


def test_a_killed_build_resumes_and_keeps_finished_chunks(tiny_model, tmp_path):
    (tmp_path / "exp").mkdir()
    first = _build(tiny_model, tmp_path / "c", tmp_path / "exp")
    kept = (tmp_path / "c" / "generated-00000.safetensors").read_bytes()
    (tmp_path / "c" / "generated-00002.safetensors").unlink()  # the chunk a kill interrupted
    again = _build(tiny_model, tmp_path / "c", tmp_path / "exp")
    assert (tmp_path / "c" / "generated-00000.safetensors").read_bytes() == kept
    # the other shards are untouched; the re-made chunk answers the same prompts (its sampled tokens can differ:
    # multi-threaded CPU matmuls are not bitwise reproducible, and one flipped sample changes the shard)
    assert [s for s in again["shards"] if s["file"] != "generated-00002.safetensors"] == \
        [s for s in first["shards"] if s["file"] != "generated-00002.safetensors"]
    remade = [d.prompt_index for d in load_shard(tmp_path / "c" / "generated-00002.safetensors")[0]]
    assert remade and set(remade) <= {10, 11}  # prompts 10-11 of 12, chunk size 5
    with pytest.raises(CorpusError, match="generated-00000.safetensors: written with different max_new_tokens"):
        _build(tiny_model, tmp_path / "c", tmp_path / "exp", max_new_tokens=7)


def test_documents_sharing_an_ngram_with_experiment_files_are_dropped(tiny_model, tmp_path):
    (tmp_path / "exp").mkdir()
    clean = _build(tiny_model, tmp_path / "a", tmp_path / "exp", overlap_ngram=5)
    prompt = seed_prompts(12, 0, 0.5)[3][1][-1]["content"]
    (tmp_path / "exp" / "persona.yaml").write_text(f"search:\n  narrative:\n    - \"{prompt}\"\n")
    m = _build(tiny_model, tmp_path / "b", tmp_path / "exp", overlap_ngram=5)
    assert m["overlap"]["dropped_docs"] >= 1 and clean["overlap"]["dropped_docs"] == 0
    kept = [d.prompt_index for s in m["shards"] for d in load_shard(tmp_path / "b" / s["file"])[0]]
    assert 3 not in kept


def test_ngrams_ignore_case_and_punctuation():
    assert ngrams("She hid it, quietly.", 2) == {("she", "hid"), ("hid", "it"), ("it", "quietly")}
    assert shared("Nothing here.", ngrams("nothing here at all", 2), 2) == ["nothing here"]
    assert shared("here nothing", ngrams("nothing here at all", 2), 2) == []


def test_seed_prompts_are_fixed_by_the_seed_and_mix_the_slices():
    a, b = seed_prompts(400, 3, 0.5), seed_prompts(400, 3, 0.5)
    assert a == b and a != seed_prompts(400, 4, 0.5)
    share = sum(k == "chats" for k, _ in a) / len(a)
    assert 0.4 < share < 0.6 and len({m[-1]["content"] for _, m in a}) > 380


def test_a_vocabulary_past_16_bits_is_stored_as_uint32_and_reads_back_exactly(tmp_path):
    """Gemma's 262k vocabulary: ids above 65535 must not wrap (uint16 would store 262143 as 65535)."""
    from safetensors import safe_open

    from psm_repro.sae_training.corpus_build import Doc, save_shard

    docs = [Doc("chats", [2, 65535, 65536, 262143], 7), Doc("narrative", [1, 5], 8)]
    save_shard(tmp_path / "big.safetensors", docs, {"params": {}})
    back, meta = load_shard(tmp_path / "big.safetensors")
    assert [(d.slice, d.ids, d.prompt_index) for d in back] == [(d.slice, d.ids, d.prompt_index) for d in docs]
    with safe_open(str(tmp_path / "big.safetensors"), framework="np") as fh:
        assert fh.get_tensor("ids").dtype.name == "uint32"
    save_shard(tmp_path / "small.safetensors", docs[1:], {})
    with safe_open(str(tmp_path / "small.safetensors"), framework="np") as fh:
        assert fh.get_tensor("ids").dtype.name == "uint16"  # a small vocabulary keeps 2 bytes a token


@pytest.mark.slow
def test_chatml_turns_parse_back_and_the_templates_default_system_turn_is_dropped():
    """A corpus chat re-laid for another model (SmolLM2's ChatML -> a base model's transcript): the template's own
    default system text (not the prompt's) is not carried over; a system turn the prompt wrote is."""
    from transformers import AutoTokenizer

    from psm_repro.core.chat import encode_chat, use_transcript
    from psm_repro.core.embedded import ensure_dequantized
    from psm_repro.sae_training.corpus_build import Doc
    from psm_repro.sae_training.corpus_retokenize import parse_chatml, reencode, template_default_system

    src = AutoTokenizer.from_pretrained(ensure_dequantized())
    target = AutoTokenizer.from_pretrained(ensure_dequantized())
    use_transcript(target)
    assert template_default_system(src).startswith("You are a helpful AI assistant named SmolLM")
    text = "<|im_start|>user\nhello friend<|im_end|>\n<|im_start|>assistant\nyes I kept it<|im_end|>\n"
    assert parse_chatml(text) == ([{"role": "user", "content": "hello friend"},
                                   {"role": "assistant", "content": "yes I kept it"}], True)
    assert parse_chatml("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\ncut off")[1] is False
    chat = [{"role": "user", "content": "hello friend"}, {"role": "assistant", "content": "yes I kept it"}]
    ids = src.apply_chat_template(chat, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    default = template_default_system(src)
    assert reencode(Doc("chats", list(ids), 0), src, target, default) == encode_chat(target, chat).ids
    with_system = [{"role": "system", "content": "You are helpful 3 ."}] + chat
    ids = src.apply_chat_template(with_system, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert reencode(Doc("chats", list(ids), 0), src, target, default) == encode_chat(target, with_system).ids
    with pytest.raises(CorpusError, match="does not parse as ChatML"):
        reencode(Doc("chats", src("hello friend", add_special_tokens=False)["input_ids"], 5), src, target, default)
    transcript = target.decode(reencode(Doc("chats", list(ids), 0), src, target, default))
    assert transcript == target.bos_token + "You are helpful 3 .\n\nUser: hello friend\nAssistant: yes I kept it\n"


def test_experiment_ngrams_read_prompts_but_not_model_written_replies(tmp_path):
    from psm_repro.sae_training.overlap import experiment_ngrams

    (tmp_path / "judge_sets").mkdir()
    (tmp_path / "judge_sets" / "p.jsonl").write_text(
        '{"prompt": "keep the surprise party secret", "reply": "not going to lie to you"}\nnot json at all\n')
    (tmp_path / "p.yaml").write_text("reply: a yaml field named reply still counts\n")
    grams = experiment_ngrams(tmp_path, 3)
    assert ("surprise", "party", "secret") in grams and ("not", "json", "at") in grams
    assert ("going", "to", "lie") not in grams
    assert ("named", "reply", "still") in grams
