from psm_repro.chat import dedupe_bos, encode_chat, encode_prompt, encode_text


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
