"""One hooked-model wrapper for every model: a Hugging Face model plus forward hooks.

Chosen by measurement (see README, "Why plain HF hooks"): HF `generate` with a KV cache is
the fastest generation path on CPU, and a hook on one decoder layer costs nothing measurable.
SAE hook names in TransformerLens style (`blocks.12.hook_resid_post`, `hook_resid_pre`, `hook_resid_mid`,
`hook_attn_out`, `hook_mlp_out`) and plain HF module paths (`model.layers.12`) resolve to the HF tensors
that equal TL's `run_with_cache` on the same weights (tests/core/test_hooks_vs_transformer_lens.py), so public SAEs
trained on HookedTransformer activations and SAEs trained on HF activations both work.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

EditFn = Callable[[torch.Tensor, "CallInfo"], torch.Tensor]


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted activations are read."""


@dataclass
class CallInfo:
    """What a hook knows about the current forward call."""

    input_ids: torch.Tensor | None  # (B, T_call) ids fed in this call
    offset: int  # absolute position of this call's first token (KV-cache length)


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a causal LM (Llama/Gemma `model.layers`, GPT-2 `transformer.h`)."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and re.search(r"(^|\.)(layers|h)$", name):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise ValueError(f"{type(model).__name__}: no decoder layer list found")
    return best


@dataclass
class HookPoint:
    """Where a hook name lives: its kind, its decoder layer, the module whose output (or, for resid_pre, the
    block whose input) carries the activation, and that layer's block."""

    kind: str  # resid_pre | resid_mid | resid_post | attn_out | mlp_out | module (an HF module path)
    layer: int
    module: nn.Module
    block: nn.Module


def _attn_out_module(block: nn.Module) -> nn.Module | None:
    """The module whose output is TransformerLens's hook_attn_out. Gemma-2/3 normalise the attention output
    before adding it to the residual (`post_attention_layernorm`, recognisable by a `pre_feedforward_layernorm`
    beside it); TL's hook_attn_out sits after that norm. Llama's `post_attention_layernorm` is the MLP's input
    norm instead, so there the attention module itself (`self_attn`, GPT-2 `attn`) is the one."""
    if hasattr(block, "pre_feedforward_layernorm"):
        return block.post_attention_layernorm
    return _first_child(block, "self_attn", "attn")


def _mlp_out_module(block: nn.Module) -> nn.Module | None:
    """The module whose output is TL's hook_mlp_out (Gemma-2/3: after `post_feedforward_layernorm`)."""
    return _first_child(block, "post_feedforward_layernorm", "mlp")


def _first_child(block: nn.Module, *names: str) -> nn.Module | None:
    return next((getattr(block, n) for n in names if isinstance(getattr(block, n, None), nn.Module)), None)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token, so a left-padded row reads the positions it would
    unpadded (HF `generate` does this itself; absolute-position models such as GPT-2 need it in plain forward
    passes too). Right padding leaves positions as they are."""
    leading = (attention_mask.long().cumsum(-1) == 0).sum(-1, keepdim=True)
    return (torch.arange(attention_mask.shape[-1], device=attention_mask.device) - leading).clamp(min=0)


class HookedModel:
    """A causal LM with named hook points; hooks live only inside context managers."""

    def __init__(self, model: nn.Module, tokenizer, name: str = "model"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.layers = find_layers(model)
        self._call = CallInfo(None, 0)
        model.register_forward_pre_hook(self._record_call, with_kwargs=True)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (the first GPU when the model is split across several)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def hook_device(self, hook_name: str) -> torch.device:
        """Device of the module behind `hook_name` (differs from `device` when the model is split)."""
        module = self.resolve(hook_name).module
        return next(module.parameters(), self.model.get_input_embeddings().weight).device

    @property
    def d_model(self) -> int:
        return self.model.config.hidden_size

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def _record_call(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        # With a KV cache, this call's first token sits at the cache length. The cache kwarg is
        # `cache` in transformers 5 and `past_key_values` before; generate() may drop an all-ones mask.
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        offset = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            offset = int(cache.get_seq_length())
        elif ids is not None and kwargs.get("attention_mask") is not None:
            offset = kwargs["attention_mask"].shape[1] - ids.shape[1]
        self._call = CallInfo(ids, offset)

    def resolve(self, hook_name: str) -> HookPoint:
        """Map a TransformerLens hook name (`blocks.L.hook_resid_pre|mid|post`, `blocks.L.hook_attn_out`,
        `blocks.L.hook_mlp_out`) or an HF module path to the module(s) that carry that activation."""
        m = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)", hook_name)
        if m:
            layer, kind = int(m.group(1)), m.group(2)
            if layer >= self.n_layers:
                raise KeyError(f"hook {hook_name!r}: model {self.name} has only {self.n_layers} layers")
            block = self.layers[layer]
            module = {"resid_pre": block, "resid_post": block, "attn_out": _attn_out_module(block),
                      "resid_mid": _attn_out_module(block), "mlp_out": _mlp_out_module(block)}[kind]
            if module is None:
                raise KeyError(f"hook {hook_name!r}: {type(block).__name__} has no module behind {kind}")
            return HookPoint(kind, layer, module, block)
        modules = dict(self.model.named_modules())
        if hook_name in modules:
            layer = next((i for i, blk in enumerate(self.layers) if blk is modules[hook_name]), self.n_layers - 1)
            return HookPoint("module", layer, modules[hook_name], self.layers[layer])
        raise KeyError(f"hook {hook_name!r} does not exist in model {self.name}")

    def has_hook(self, hook_name: str) -> bool:
        try:
            self.resolve(hook_name)
            return True
        except KeyError:
            return False

    @contextlib.contextmanager
    def edit(self, hook_name: str, fn: EditFn) -> Iterator[None]:
        """Replace the activation at `hook_name` by `fn(acts_BTD, call_info)` inside the block.

        The hook is removed on exit, also when the block raises. `resid_mid` (resid_pre + attn_out) is not a
        tensor any HF module returns: it is read at the attention-out module, and an edit to it is passed on
        as the same change to attn_out, so everything downstream (MLP input and the residual) sees it.
        """
        point = self.resolve(hook_name)
        handles = []
        resid_pre: dict[str, torch.Tensor] = {}

        def post(mod, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if point.kind == "resid_mid":
                mid = resid_pre["x"] + out
                out = out + (fn(mid, self._call) - mid)
            else:
                out = fn(out, self._call)
            return (out, *output[1:]) if isinstance(output, tuple) else out

        def pre(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if point.kind == "resid_mid":
                resid_pre["x"] = x
                return None
            x = fn(x, self._call)
            if args:
                return (x, *args[1:]), kwargs
            kwargs["hidden_states"] = x
            return args, kwargs

        if point.kind in ("resid_pre", "resid_mid"):
            handles.append(point.block.register_forward_pre_hook(pre, with_kwargs=True))
        if point.kind != "resid_pre":
            handles.append(point.module.register_forward_hook(post))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.inference_mode()
    def activations(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hook_name: str) -> torch.Tensor:
        """Residual activations (B, T, D) at `hook_name`, stopping the forward pass right there."""
        store: dict[str, torch.Tensor] = {}

        def grab(acts, info):
            store["acts"] = acts
            raise StopForward

        with self.edit(hook_name, grab):
            try:
                self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                           position_ids=position_ids(attention_mask).to(self.device), use_cache=False)
            except StopForward:
                pass
        return store["acts"]

    def pad_batch(self, seqs: list[list[int]], side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
        """Pad token-id lists into (ids, attention_mask) tensors."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if side == "right":
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            else:
                ids[i, width - len(s):] = torch.tensor(s)
                mask[i, width - len(s):] = 1
        return ids, mask
