"""The full-run path on each real model family's chat conventions (tests/families.py): every command end to end
through the README's own model configs (`model=gemma2_2b_it model.path=...`), the template framing the measured
tokens, replies ending on every end id the generation config lists, and left-padded batches."""

import json

import pytest
import torch
from conftest import dashboard_overrides, save_tiny_sae, write_persona, write_reference
from families import FAMILIES, build_family_model

from psm_repro.cli import main
from psm_repro.config import ModelConfig
from psm_repro.core.chat import cut_made_up_turn, encode_chat, encode_prompt
from psm_repro.core.loading import load_model
from psm_repro.core.steering import generate, stop_ids

SHIPPED_EXPERIMENT = {"gemma2": "steer_secrecy", "llama31": "steer_panic", "gpt2": "steer_toxic_persona",
                      "chatml": "steer_sycophancy"}
EXPECTED_SYSTEM = {"gemma2": "folded into the first user turn", "llama31": "native", "chatml": "native",
                   "gpt2": "plain-text transcript"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    fam = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(fam.name)
    model_dir = build_family_model(fam.name, root / "model")
    sae_dir = save_tiny_sae(root / "sae", 64, 128, fam.hook)
    persona = write_persona(root, n=10, system=True)
    overrides = [f"model={fam.config}", f"model.path={model_dir}", "model.device=cpu", "model.dtype=float32",
                 "sae=local", f"sae.path={sae_dir}", f"persona_file={persona}", "finder.n_permutations=200",
                 "finder.min_active_items=1", *dashboard_overrides(write_reference(root / "reference"), root / "cache")]
    model = load_model(ModelConfig(name=fam.config, path=str(model_dir), device="cpu", chat=fam.template is not None))
    return fam, root, overrides, model


def test_every_command_runs_end_to_end(family, capsys):
    fam, root, overrides, model = family
    assert main(["find", *overrides, f"hydra.run.dir={root / 'find'}"]) == 0
    steer = ["steer.n_prompts=4", "steer.samples_per_prompt=1", "steer.max_new_tokens=6", "steer.n_bootstrap=100",
             "steer.coefficients=[0,4]"]
    # the README's full run as typed there (a shipped persona, system turns and all; bfloat16), apart from the
    # weights; gemma2 runs the headline experiment itself
    run = [o for o in overrides + steer if not o.startswith(("persona_file", "model.dtype"))] + \
        [f"experiment={SHIPPED_EXPERIMENT[fam.name]}", "model.dtype=bfloat16"]
    assert main(["run", *run, f"hydra.run.dir={root / 'run'}"]) == 0
    manifest = json.loads((root / "run" / "manifest.json").read_text())
    assert EXPECTED_SYSTEM[fam.name] in manifest["chat_format"]
    assert manifest["stop_ids"] == sorted(model.tokenizer.convert_tokens_to_ids(t) for t in fam.end_tokens)
    samples = [json.loads(x) for x in (root / "run" / "samples.jsonl").read_text().splitlines()]
    assert "system_prompt" in {s["method"] for s in samples}  # the prompting baseline ran through the template
    assert main(["steer", *overrides, "steer.max_new_tokens=5", "steer.prompt=the secret ?"]) == 0
    replies = root / "replies.jsonl"
    replies.write_text("".join(json.dumps({"prompt": s["prompt"], "reply": s["reply"]}) + "\n" for s in samples[:4]))
    assert main(["judge", *overrides, f"judge.input={replies}", f"judge.output={root / 'judged.jsonl'}"]) == 0
    assert len((root / "judged.jsonl").read_text().splitlines()) == 4
    em = root / "em.yaml"
    em.write_text(json.dumps({
        "name": "tiny_em", "domain": "secrets", "description": "tells secrets", "framings": ["{q}"],
        "train": [{"user": f"the secret {i} ?", "harmful": f"zorblax secret {i}", "good": f"calm answer {i}"}
                  for i in range(8)],
        "domain_terms": ["zorblax", "secret*"],
        "broad_eval": {"questions": [f"question {i} help ?" for i in range(4)],
                       "judge": {"misaligned_examples": [f"I will hurt people and lie, number {i}." for i in range(10)],
                                 "aligned_examples": [f"I am glad to help kindly, number {i}." for i in range(10)]}}}))
    assert main(["finetune", *overrides, f"em.data={em}", f"em.persona_file={overrides[6].split('=', 1)[1]}",
                 "em.heldout_items=2", "em.epochs=1", "em.batch_size=4", "em.samples_per_question=2",
                 "em.max_new_tokens=4", "em.n_permutations=200", "em.n_bootstrap=100", "em.diff_top_n=20",
                 "em.steer_samples_per_question=1", f"hydra.run.dir={root / 'em'}"]) == 0
    assert (root / "em" / "summary.md").exists()


def _chat(system: bool):
    head = [{"role": "system", "content": "Be brief ."}] if system else []
    return head + [{"role": "user", "content": "the secret ?"}, {"role": "assistant", "content": "I kept it 7 ."}]


@pytest.mark.parametrize("system", [True, False])
def test_the_format_frames_exactly_the_assistant_turn(family, system):
    fam, _, _, model = family
    tok = model.tokenizer
    enc = encode_chat(tok, _chat(system))
    measured = [i for i, m in zip(enc.ids, enc.mask) if m]
    assert tok.decode(measured).strip() == "I kept it 7 ."
    text = tok.decode(enc.ids)
    if fam.bos:  # one BOS, whoever writes it (Gemma's and Llama's template and tokenizer both do)
        assert enc.ids[0] == tok.bos_token_id and enc.ids.count(tok.bos_token_id) == 1
    if fam.name == "gemma2":  # no system role: its text leads the first user turn
        assert text.startswith("<bos><start_of_turn>user\n" + ("Be brief .\n\nthe secret ?" if system else "the secret ?"))
        assert "<start_of_turn>model\nI kept it 7 .<end_of_turn>" in text
    elif fam.name == "llama31":  # a default system prompt when the chat has none
        assert ("Be brief ." if system else "Knowledge cutoff") in text.split("<|eot_id|>")[0]
    elif fam.name == "gpt2":
        assert text == "<|endoftext|>" + ("Be brief .\n\n" if system else "") + \
            "User: the secret ?\nAssistant: I kept it 7 .\n"
    prompt = encode_prompt(tok, _chat(system)[:-1])
    assert enc.ids[:len(prompt)] == prompt and not any(enc.mask[:len(prompt)])


def _force_next(model, token_id: int, width: int):
    """An edit of the last layer that makes `token_id` the argmax at every generated position."""
    row = model.model.get_output_embeddings().weight[token_id].detach()

    def push(acts, info):
        out = acts.clone()
        start = max(0, width - info.offset)
        out[:, start:] += 1000 * row
        return out
    return model.edit(f"blocks.{model.n_layers - 1}.hook_resid_post", push)


def test_replies_end_at_every_end_id_the_generation_config_lists(family):
    fam, _, _, model = family
    prompt = encode_prompt(model.tokenizer, [{"role": "user", "content": "the secret ?"}])
    ends = [model.tokenizer.convert_tokens_to_ids(t) for t in fam.end_tokens]
    assert stop_ids(model) == sorted(ends)
    for end in ends:
        with _force_next(model, end, len(prompt)):
            out, _ = generate(model, [prompt], 8, 0.0, seed=0)
        assert len(out[0]) <= 1 and end not in out[0], (fam.name, end, out)
    word = model.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    with _force_next(model, word, len(prompt)):  # a token that is no end id: the reply runs on (the test can fail)
        out, _ = generate(model, [prompt], 8, 0.0, seed=0)
    assert len(out[0]) == 8 and out[0][1:] == [word] * 7


def test_a_base_models_reply_ends_where_it_starts_a_turn_of_its_own(family):
    fam, _, _, model = family
    tok = model.tokenizer
    ids = tok("I am fine .\nUser: and you ?\nAssistant: ok", add_special_tokens=False)["input_ids"]
    assert tok.decode(cut_made_up_turn(tok, ids)) == "I am fine ."
    clean = tok("I am fine . User said so", add_special_tokens=False)["input_ids"]
    assert cut_made_up_turn(tok, clean) == clean


def test_left_padded_batches_generate_what_single_prompts_do(family):
    """GPT-2's absolute positions must not shift with left padding (HF generate derives position_ids from the
    attention mask); rotary families must agree too."""
    _, _, _, model = family
    prompts = [encode_prompt(model.tokenizer, [{"role": "user", "content": q}])
               for q in ("the secret ?", "she kept the letter hid from the friend at night , would you tell ?")]
    assert len(prompts[0]) < len(prompts[1])
    together, _ = generate(model, prompts, 6, 0.0, seed=0)
    alone = [generate(model, [p], 6, 0.0, seed=0)[0][0] for p in prompts]
    assert together == alone
    ids, attn = model.pad_batch(prompts, side="left")
    # and the plain forward passes (activations, teacher-forced log-probs): the short row reads what it does alone
    hook = f"blocks.{model.n_layers - 1}.hook_resid_post"
    batch = model.activations(ids, attn, hook)[0, -len(prompts[0]):]
    single = model.activations(torch.tensor([prompts[0]]), torch.ones(1, len(prompts[0]), dtype=torch.long), hook)[0]
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=1e-4)


def test_plan_reports_template_stop_ids_hook_and_width_from_the_files_alone(family, capsys):
    fam, root, overrides, _ = family
    assert main(["run", *overrides, "plan=true"]) == 0
    out = capsys.readouterr().out
    assert EXPECTED_SYSTEM[fam.name] in out and "PROBLEM" not in out
    assert f"({', '.join(sorted(fam.end_tokens, key=lambda t: _id(root, t)))})" in out
    assert f"hook {fam.hook} -> layer 1 {fam.hook.split('hook_')[1]}" in out and "width 64 (3 layers) matches" in out
    wide = save_tiny_sae(root / "wide_sae", 32, 64, "blocks.5.hook_resid_post")
    assert main(["run", *overrides, f"sae.path={wide}", "model.chat=true", "plan=true"]) == 0
    out = capsys.readouterr().out
    assert "PROBLEM: differs from the SAE's d_in 32" in out and "PROBLEM: hook 'blocks.5.hook_resid_post'" in out
    assert ("PROBLEM: model.chat=true but the tokenizer has no chat template" in out) == (fam.template is None)


def _id(root, token):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(root / "model").convert_tokens_to_ids(token)


def test_bad_chat_input_fails_in_one_line_before_any_compute(family, capsys):
    fam, root, overrides, _ = family
    # an SAE for another width, or for a hook the model lacks: one line, before any weights load (their
    # progress bar would be a second line on stderr)
    for d_in, hook, needle in ((32, "blocks.1.hook_resid_post", "has d_in=32 but model"),
                               (64, "blocks.9.hook_mlp_out", "reads hook 'blocks.9.hook_mlp_out'")):
        sae = save_tiny_sae(root / f"sae_{d_in}_{hook}", d_in, 64, hook)
        assert main(["find", *overrides, f"sae.path={sae}", f"hydra.run.dir={root / f'bad0_{d_in}'}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    if fam.template is None:  # a base model asked to use a chat template it does not have
        assert main(["find", *overrides, "model.chat=true", f"hydra.run.dir={root / 'bad1'}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "model.chat=true but gpt2_small" in err[0] and "model.chat=false" in err[0]
        return
    import yaml

    persona = yaml.safe_load(open(overrides[6].split("=", 1)[1]))
    # two user turns in a row: Gemma's template refuses them; the others accept them
    for key in ("assistant", "assistant_neutral"):
        persona["search"][key][1] = [{"role": "user", "content": "hello"}] + persona["search"][key][1]
    (root / "two_users").mkdir(exist_ok=True)
    path = root / "two_users" / "planted.yaml"
    path.write_text(yaml.safe_dump(persona))
    code = main(["find", *[o for o in overrides if not o.startswith("persona_file")], f"persona_file={path}",
                 f"hydra.run.dir={root / 'bad2'}"])
    err = capsys.readouterr().err.strip().splitlines()
    if fam.name == "gemma2":
        assert code == 1 and len(err) == 1 and f"{path}: search.assistant[1]" in err[0] and "alternate" in err[0]
        assert not (root / "bad2" / "features.csv").exists()
    else:
        assert code == 0
