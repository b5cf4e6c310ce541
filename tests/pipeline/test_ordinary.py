"""The AI-entity check on ordinary chats: token groups from the real template, a planted template-token latent,
hand-computed contrasts and the density-matched baseline."""

import numpy as np
import pytest
import torch
from conftest import save_tiny_sae
from families import FAMILIES, build_tokenizer

from psm_repro.config import SAEConfig
from psm_repro.core.loading import load_sae
from psm_repro.core.personas import PersonaError, load_persona
from psm_repro.pipeline.ordinary import OrdinaryItem, chat_roles, load_items, ordinary_check, pick_latents, summarise

ITEM = OrdinaryItem("cooking", "the garden ?", "she kept the book", "she kept the book")


def test_chat_tokens_are_split_into_template_user_and_assistant_words(tiny_model):
    ids, roles = chat_roles(tiny_model.tokenizer, ITEM)
    toks = tiny_model.tokenizer.convert_ids_to_tokens(ids)
    words = {g: [t for t, r in zip(toks, roles) if r == g] for g in ("markup", "template_text", "user", "assistant")}
    assert words["user"] == ["the", "garden", "?"]
    assert words["assistant"] == ["she", "kept", "the", "book"]
    # the fixture's template adds a default system prompt, as SmolLM2's does: template text, not content
    # ("assistant." is not in the fixture's word vocabulary: one unknown token, a special token, so markup)
    assert words["template_text"] == ["You", "are", "a", "helpful"]
    assert words["markup"].count("<|im_end|>") == 3 and words["markup"].count("<|im_start|>") == 3
    assert set(words["markup"]) <= {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "system", "user", "assistant", "\n"}


@pytest.mark.parametrize("family, template_text", [("gemma2", ""), ("llama31", "Knowledge cutoff: 2023-12.")])
def test_real_template_markup_is_special_tokens_role_names_and_newlines(family, template_text, tmp_path):
    tok = build_tokenizer(FAMILIES[family], tmp_path)
    item = OrdinaryItem("x", "hello there, how are you?", "I am fine.", "I am fine.")
    ids, roles = chat_roles(tok, item)
    text = {g: "".join(tok.decode([i]) for i, r in zip(ids, roles) if r == g)
            for g in ("markup", "template_text", "user", "assistant")}
    assert (text["user"], text["assistant"], text["template_text"]) == (item.user, item.assistant, template_text)
    special = set(tok.all_special_tokens)
    markup = [tok.decode([i]) for i, r in zip(ids, roles) if r == "markup"]
    # what is left of the markup without special tokens and newlines: the role names, whole
    names = "".join(m for m in markup if m not in special and m.strip())
    assert names == {"gemma2": "usermodel", "llama31": "systemuserassistant"}[family]
    assert markup.count("\n") >= 2


@pytest.mark.parametrize("family", ["gemma2", "llama31"])
def test_a_base_models_transcript_is_split_into_its_turn_markers_and_the_two_messages(family, tmp_path):
    from psm_repro.core.chat import use_transcript

    tok = build_tokenizer(FAMILIES[family], tmp_path)
    use_transcript(tok)  # model.chat=false: "User: ...\nAssistant: ...\n", no template of its own
    item = OrdinaryItem("x", "hello there, how are you?", "I am fine.", "I am fine.")
    ids, roles = chat_roles(tok, item)
    text = {g: "".join(tok.decode([i]) for i, r in zip(ids, roles) if r == g)
            for g in ("markup", "template_text", "user", "assistant")}
    # a word token carries the space after "User:"; it is still the user's word, not markup
    assert (text["user"].strip(), text["assistant"].strip()) == (item.user, item.assistant)
    assert text["template_text"] == ""
    assert text["markup"].replace(" ", "") == "User:\nAssistant:\n"


def test_a_latent_planted_on_a_template_word_fires_on_template_tokens_only(tiny_model, tmp_path):
    hook = "blocks.0.hook_resid_post"
    tok = tiny_model.tokenizer
    # a latent reading the embedding of "helpful" (in the default system prompt, never in the item's words)
    w = tiny_model.model.get_input_embeddings().weight.detach()
    target = w[tok.convert_tokens_to_ids("helpful")]
    ids, roles = chat_roles(tok, ITEM)
    acts = tiny_model.activations(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), hook)[0]
    score = acts @ target / target.norm()
    on = torch.tensor([t == tok.convert_tokens_to_ids("helpful") for t in ids])
    threshold = (score[on].min() + score[~on].max()) / 2
    assert score[on].min() > score[~on].max()
    W_enc = torch.zeros(64, 4)
    W_enc[:, 0] = target / target.norm()
    b_enc = torch.tensor([-float(threshold), -1e6, -1e6, -1e6])
    sae = load_sae(SAEConfig(name="p", path=str(save_tiny_sae(tmp_path / "p", 64, 4, hook, W_enc=W_enc,
                                                              b_enc=b_enc))), tiny_model)
    out = ordinary_check(tiny_model, sae, [ITEM, ITEM], [0], [1], prepend_bos=False, n_bootstrap=100, seed=0)
    g = out["groups"]["ai"]
    n_text = roles.count("template_text")
    assert g["template_text"]["rate"]["value"] == pytest.approx(1 / n_text)
    assert g["markup"]["rate"]["value"] == g["user"]["rate"]["value"] == g["assistant"]["rate"]["value"] == 0
    assert g["prose"]["rate"]["value"] == 0
    assert out["contrasts"]["template_text_minus_prose"]["rate"]["ai_minus_random"]["value"] == pytest.approx(1 / n_text)


def test_contrasts_and_the_random_baseline_on_hand_made_activations():
    ones, zeros = torch.ones(4, 2), torch.zeros(4, 2)
    half = torch.tensor([[1.0, 0.0]] * 4)
    quarter = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 0.0]] * 2)
    ai = {"markup": [zeros] * 3, "template_text": [zeros] * 3, "user": [zeros] * 3, "assistant": [ones * 2] * 3,
          "prose": [half] * 3}
    rnd = {"markup": [zeros] * 3, "template_text": [zeros] * 3, "user": [zeros] * 3, "assistant": [half] * 3,
           "prose": [quarter] * 3}
    out = summarise(ai, rnd, n_bootstrap=100, seed=0)
    c = out["contrasts"]["assistant_minus_prose"]
    assert c["rate"]["ai"]["value"] == 0.5 and c["rate"]["random"]["value"] == 0.25
    assert c["mean"]["ai"]["value"] == pytest.approx(2.0 - 0.5) and c["rate"]["ai_minus_random"]["value"] == 0.25
    assert c["mean"]["ai_minus_random"]["value"] == pytest.approx((2.0 - 0.5) - (0.5 - 0.25))
    assert out["items_with_any_firing"] == {"assistant": 1.0, "prose": 1.0}


def test_latents_are_the_top_narrative_ones_with_density_matched_twins():
    effect = torch.tensor([0.1, 3.0, 2.0, 5.0, 0.5, 1.0])
    significant = np.array([True, True, True, False, True, True])  # latent 3 has the top effect but no FDR pass
    density = torch.tensor([0.001, 0.01, 0.1, 0.5, 0.011, 0.09])
    ai, rnd = pick_latents(effect, significant, density, n=2, seed=0)
    assert ai == [1, 2] and rnd == [4, 5]


def test_bad_ordinary_files_fail_with_file_and_line(tmp_path):
    bad = tmp_path / "o.yaml"
    bad.write_text("name: o\nitems:\n  - topic: a\n    user: b\n    assistant: c\n")
    with pytest.raises(PersonaError, match=r"o.yaml:3: items\[0\] must have exactly the keys"):
        load_items(bad)
    shipped = load_items(load_persona("experiments/personas/ai_entity.yaml").ordinary)
    assert len(shipped) == 60 and len({i.topic for i in shipped}) == 10
