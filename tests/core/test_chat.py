from psm_repro.core.chat import dedupe_bos, encode_chat, encode_prompt, encode_text


def test_dedupe_bos_keeps_one():
    assert dedupe_bos([1, 1, 5, 6], 1) == [1, 5, 6]
    assert dedupe_bos([1, 5, 1], 1) == [1, 5, 1]
    assert dedupe_bos([5, 6], None) == [5, 6]


def test_chat_has_a_single_bos_even_if_the_tokenizer_adds_one(tiny_model):
    tok = tiny_model.tokenizer
    ids = encode_prompt(tok, [{"role": "user", "content": "the secret ?"}])
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    # a tokenizer that also prepends BOS would give two; the guard must leave one
    doubled = [tok.bos_token_id] + ids
    assert dedupe_bos(doubled, tok.bos_token_id) == ids


def test_assistant_mask_covers_exactly_the_reply_content(tiny_model):
    tok = tiny_model.tokenizer
    enc = encode_chat(tok, [{"role": "user", "content": "the letter ?"},
                            {"role": "assistant", "content": "she kept the secret"}])
    picked = [t for t, m in zip(enc.ids, enc.mask) if m]
    assert tok.decode(picked) == "she kept the secret"
    assert not any(m for t, m in zip(enc.ids, enc.mask) if t in tok.all_special_ids)


def test_text_mask_never_counts_bos(tiny_model):
    tok = tiny_model.tokenizer
    with_bos = encode_text(tok, "the river", prepend_bos=True)
    assert with_bos.ids[0] == tok.bos_token_id and with_bos.mask == [False, True, True]
    assert encode_text(tok, "the river", prepend_bos=False).mask == [True, True]


def test_text_mask_skips_positions_the_sae_never_saw(tiny_model):
    tok = tiny_model.tokenizer
    assert encode_text(tok, "the river", prepend_bos=True, first_position=2).mask == [False, False, True]
    assert encode_text(tok, "the river", prepend_bos=False, first_position=1).mask == [False, True]


GEMMA_LIKE_TEMPLATE = (  # written from Gemma's documented behaviour: BOS from the template, no system role
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")


def _gemma_like_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    words = "user model Play this role secretive Tell me a secret I won't say it \n".split(" ")
    vocab = {t: i for i, t in enumerate(specials + sorted(set(words) | {"\n"}))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(pattern="\n", behavior="isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = GEMMA_LIKE_TEMPLATE
    fast.save_pretrained(tmp_path)
    return PreTrainedTokenizerFast.from_pretrained(tmp_path)


def test_templates_without_a_system_role_get_it_folded_into_the_first_user_turn(tmp_path):
    from psm_repro.core.chat import encode_chat, encode_prompt, supports_system, system_role_handling

    tok = _gemma_like_tokenizer(tmp_path)
    assert not supports_system(tok) and system_role_handling(tok) == "folded into the first user turn"
    msgs = [{"role": "system", "content": "Play this role secretive"}, {"role": "user", "content": "Tell me a secret"}]
    toks = tok.convert_ids_to_tokens(encode_prompt(tok, msgs))
    assert toks.count("<bos>") == 1 and toks[:3] == ["<bos>", "<start_of_turn>", "user"]
    assert toks[-2:] == ["<start_of_turn>", "model"] and toks.count("<start_of_turn>") == 2
    assert toks.index("secretive") < toks.index("Tell")  # the system text leads the (only) user turn
    enc = encode_chat(tok, msgs + [{"role": "assistant", "content": "I won't say it"}])
    assert tok.decode([i for i, m in zip(enc.ids, enc.mask) if m]).split() == ["I", "won't", "say", "it"]


def test_templates_with_a_system_role_keep_it(tmp_path):
    from conftest import build_tokenizer

    from psm_repro.core.chat import encode_prompt, fold_system, supports_system, system_role_handling

    tok = build_tokenizer(tmp_path)  # ChatML
    assert supports_system(tok) and system_role_handling(tok) == "native"
    msgs = [{"role": "system", "content": "secret"}, {"role": "user", "content": "hello"}]
    toks = tok.convert_ids_to_tokens(encode_prompt(tok, msgs))
    assert toks.index("system") < toks.index("secret") < toks.index("user") < toks.index("hello")
    assert fold_system(msgs) == [{"role": "user", "content": "secret\n\nhello"}]
    assert fold_system(msgs[1:]) == msgs[1:]
