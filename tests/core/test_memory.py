"""Batch sizes from free memory: the cap on CPU, a smaller batch when the GPU is (pretend) nearly full."""

import types

import torch

from psm_repro.config import ModelConfig, SAEConfig
from psm_repro.core import memory
from psm_repro.core.loading import load_sae


def test_bytes_per_token_counts_kv_cache_activations_and_logits(tiny_model):
    c = tiny_model.model.config
    head_dim = c.hidden_size // c.num_attention_heads
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4
    act = (6 * c.hidden_size + 3 * c.intermediate_size) * 4
    assert memory.bytes_per_token(tiny_model, logits=False) == kv + act
    assert memory.bytes_per_token(tiny_model) == kv + act + 4 * c.vocab_size


def test_cpu_uses_the_configured_cap(tiny_model):
    assert memory.rows_that_fit(tiny_model, 10_000, cap=48) == 48


def test_cuda_batch_shrinks_to_free_memory(tiny_model, monkeypatch):
    fake = types.SimpleNamespace(device=torch.device("cuda", 0), model=tiny_model.model)
    per_row = 100 * memory.bytes_per_token(tiny_model)
    free = int(10 * per_row / memory.HEADROOM) + 1  # room for exactly 10 rows of 100 tokens
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 10 * free))
    assert memory.rows_that_fit(fake, 100, cap=48) == 10
    assert memory.rows_that_fit(fake, 100, cap=4) == 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1, 10))
    assert memory.rows_that_fit(fake, 100, cap=48) == 1  # never zero: one row is tried, not refused


def test_sae_dtype_float32_by_default_and_on_request(tiny_model, tiny_sae_dir):
    assert load_sae(SAEConfig(path=str(tiny_sae_dir)), tiny_model).W_enc.dtype == torch.float32
    sae = load_sae(SAEConfig(path=str(tiny_sae_dir), dtype="bfloat16"), tiny_model)
    assert sae.W_enc.dtype == torch.bfloat16


def test_split_across_gpus_needs_cuda():
    import pytest

    from psm_repro.config import ConfigError

    with pytest.raises(ConfigError, match="model.n_devices"):
        ModelConfig(device="cpu", n_devices=2)
