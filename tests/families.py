"""Tiny random models whose tokenizers behave like the real families' (templates written here from the
families' documented behaviour, not copied):

* gemma2:  no system role (the template raises), `<start_of_turn>model`, turns end with `<end_of_turn>`, the
           template writes BOS and the tokenizer adds one too; generation config ends on `<eos>` and `<end_of_turn>`.
* llama31: `<|start_header_id|>role<|end_header_id|>` headers, turns end with `<|eot_id|>`, a default system
           prompt when the chat has none; generation config ends on three ids.
* gpt2:    no chat template at all (a base model: model.chat=false), absolute position embeddings, no pad token.
* chatml:  Qwen2.5-style `<|im_start|>role ... <|im_end|>`, a default system prompt, no BOS.

Each tokenizer is a byte-level BPE trained here on a few hundred words, so multi-character text such as
"Assistant:" splits into several tokens as it does in the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from conftest import WORDS

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = 'Knowledge cutoff: 2023-12.' %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' + system + '<|eot_id|>' }}"
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@dataclass
class Family:
    name: str
    specials: list[str]
    bos: str | None
    eos: str
    pad: str | None
    template: str | None
    end_tokens: list[str]  # generation_config.eos_token_id
    add_bos: bool  # the tokenizer itself prepends BOS (Gemma, Llama-3)
    config: str  # the model config the README's full run uses
    hook: str  # the public-SAE hook style tested on this family
    arch: str


FAMILIES = {
    "gemma2": Family("gemma2", ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>",
                     "<pad>", GEMMA_TEMPLATE, ["<eos>", "<end_of_turn>"], True, "gemma2_2b_it",
                     "blocks.1.hook_mlp_out", "gemma2"),  # Gemma Scope MLP-out style
    "llama31": Family("llama31", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                  "<|eom_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>", None, LLAMA_TEMPLATE,
                      ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], True, "llama31_8b_it",
                      "blocks.1.hook_resid_post", "llama"),  # Llama Scope / andyrdt style
    "gpt2": Family("gpt2", ["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>", None, None, ["<|endoftext|>"], False,
                   "gpt2_small", "blocks.1.hook_resid_pre", "gpt2"),  # gpt2-small-res-jb style
    "chatml": Family("chatml", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>",
                     CHATML_TEMPLATE, ["<|im_end|>", "<|endoftext|>"], False, "qwen25_05b_it",
                     "blocks.1.hook_resid_post", "qwen2"),
}
TRAINING_TEXT = " ".join(WORDS) + " User: Assistant: hello there, how are you? I am fine. Play this role in your reply:"


def build_tokenizer(fam: Family, path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=fam.specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TRAINING_TEXT] * 20 + [" ".join(str(i) for i in range(100))], trainer)
    if fam.add_bos:
        bos_id = tok.token_to_id(fam.bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{fam.bos} $A", pair=f"{fam.bos} $A $B",
                                                           special_tokens=[(fam.bos, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.pad,
                                   unk_token=None, additional_special_tokens=[t for t in fam.specials])
    if fam.template:
        fast.chat_template = fam.template
    fast.save_pretrained(path)
    return fast


def build_family_model(name: str, path: Path, seed: int = 0) -> Path:
    """Save a tiny random model of `name`'s family with its tokenizer and generation config to `path`."""
    import transformers as tf

    fam = FAMILIES[name]
    tok = build_tokenizer(fam, path)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(seed)
    if fam.arch == "gemma2":
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**small, head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                                                     **ids))
    elif fam.arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**small, **ids))
    elif fam.arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**small, **ids))
    else:
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, **ids))
    model.generation_config = tf.GenerationConfig(
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=[tok.convert_tokens_to_ids(t) for t in fam.end_tokens])
    model.save_pretrained(path)
    return path
