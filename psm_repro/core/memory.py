"""How many rows fit in one batch: a configured cap on CPU, also bounded by free GPU memory on CUDA.

The estimate is deliberately pessimistic (KV cache + one layer's activations + fp32 logits per
token), so a sweep that fits on one card keeps fitting when prompts grow a little. Batch sizes only
change how rows are grouped, never which rows run; on CPU the cap is used as is, so CPU runs are
byte-identical whatever GPU exists.
"""

from __future__ import annotations

import torch

from psm_repro.core.hooked import HookedModel

HEADROOM = 0.7
"""Fraction of free GPU memory a batch may take (the caching allocator and fragmentation need the rest)."""


def bytes_per_token(model: HookedModel, logits: bool = True) -> int:
    """Rough peak bytes one token of one row adds during a forward / generate step."""
    c = model.model.config
    c = getattr(c, "text_config", c)
    width = next(model.model.parameters()).element_size()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    kv_cache = 2 * c.num_hidden_layers * kv_heads * head_dim * width
    # one layer in flight: residual, attention output, MLP up/gate (intermediate) and a few copies
    inter = getattr(c, "intermediate_size", None) or 4 * c.hidden_size
    activations = (6 * c.hidden_size + 3 * inter) * width
    return kv_cache + activations + (4 * c.vocab_size if logits else 0)


def rows_that_fit(model: HookedModel, tokens_per_row: int, cap: int, logits: bool = True) -> int:
    """Rows per batch: `cap`, lowered on CUDA until `rows x tokens_per_row` fits in free memory."""
    if model.device.type != "cuda":
        return cap
    free, _ = torch.cuda.mem_get_info(model.device)
    per_row = max(1, tokens_per_row) * bytes_per_token(model, logits)
    return max(1, min(cap, int(free * HEADROOM // per_row)))
