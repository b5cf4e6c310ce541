"""Loading models and SAEs. Every version-sensitive call into transformers / sae-lens is here."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from psm_repro.config import ModelConfig, SAEConfig
from psm_repro.core.chat import use_transcript
from psm_repro.core.embedded import ensure_dequantized
from psm_repro.core.hooked import HookedModel
from psm_repro.core.paths import PROJECT_ROOT, project_path

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class LoadError(RuntimeError):
    """A model or SAE cannot be used as configured; the message names both sides."""


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LoadError("model.device=cuda: no CUDA device is available")
    return torch.device(device)


def skeleton(where: str, tokenizer, name: str, local_only: bool = False) -> HookedModel:
    """The model's module tree on the meta device, without weights: enough to resolve hooks, read the width and
    the generation config's end ids."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(where, local_files_only=local_only)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    try:
        model.generation_config = GenerationConfig.from_pretrained(where, local_files_only=local_only)
    except OSError:
        pass
    return HookedModel(model, tokenizer, name=name)


def context_length(where: str) -> int | None:
    """The model's maximum positions (`max_position_embeddings`, a multimodal config's text part included)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(where)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


class SAEFacts(NamedTuple):
    d_in: int | None
    hook: str | None
    d_sae: int | None
    """Latents (None where only the downloaded SAE can tell)."""


def sae_facts_on_disk(cfg: SAEConfig) -> SAEFacts:
    """(d_in, hook name, d_sae) as far as the config alone tells: a disk SAE's cfg.json, a registry SAE's
    `sae.d_in`."""
    if cfg.path and (project_path(cfg.path) / "cfg.json").exists():
        meta = json.loads((project_path(cfg.path) / "cfg.json").read_text())
        return SAEFacts(meta.get("d_in"), (meta.get("metadata") or {}).get("hook_name"), meta.get("d_sae"))
    return SAEFacts(cfg.d_in, None, None)


def check_sae_fits(model: HookedModel, cfg: SAEConfig) -> None:
    """The SAE's width and hook against the model, from configs only (before any weights load)."""
    d_in, hook, _ = sae_facts_on_disk(cfg)
    if d_in is not None and d_in != model.d_model:
        raise LoadError(f"SAE {cfg.name} has d_in={d_in} but model {model.name} has width {model.d_model}"
                        + saes_for_hint(model.name))
    if hook and not model.has_hook(hook):
        raise LoadError(f"SAE {cfg.name} reads hook {hook!r}, which model {model.name} does not have"
                        + saes_for_hint(model.name))


def saes_for_hint(model_name: str) -> str:
    """"; SAE configs for this model: sae=..." from the shipped SAE configs' `for_models`, or ""."""
    import yaml

    names = sorted(p.stem for p in (PROJECT_ROOT / "configs" / "sae").glob("*.yaml")
                   if model_name in ((yaml.safe_load(p.read_text()) or {}).get("for_models") or []))
    return f"; SAE configs for {model_name}: " + ", ".join(f"sae={n}" for n in names) if names else ""


def load_model(cfg: ModelConfig, before_weights: Callable[[object, int | None], None] | None = None,
               sae: SAEConfig | None = None) -> HookedModel:
    """Load a causal LM and its tokenizer through `from_pretrained` and wrap it with hooks.

    Before any weights load (or download), `before_weights(tokenizer, context)` runs (`context`: the model's
    maximum positions, from its config) and `sae` is checked against the model's config (width, hook), so input
    the chat format or the model cannot take fails in seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = _adapter_dir(cfg)
    if cfg.source == "embedded":
        where = str(ensure_dequantized(cfg.embedded))
    elif cfg.source == "hub":
        where = cfg.hf_id
    else:
        where = str(project_path(cfg.path))
        if not Path(where).is_dir():
            raise LoadError(f"model.path: {cfg.path} is not a directory")
    device = pick_device(cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(where)
    if not cfg.chat:
        use_transcript(tokenizer)
    elif tokenizer.chat_template is None:  # before the weights load
        raise LoadError(f"model.chat=true but {cfg.name} ({where}) has no chat template; a base model needs "
                        "model.chat=false")
    if before_weights is not None:
        before_weights(tokenizer, context_length(where))
    if sae is not None:
        check_sae_fits(skeleton(where, tokenizer, cfg.name), sae)
    if cfg.n_devices > 1:
        if device.type != "cuda" or torch.cuda.device_count() < cfg.n_devices:
            raise LoadError(f"model.n_devices={cfg.n_devices}: only {torch.cuda.device_count()} CUDA devices here")
        # accelerate places whole decoder layers, filling GPU 0 first, within each card's free memory
        max_memory = {i: torch.cuda.mem_get_info(i)[0] for i in range(cfg.n_devices)}
        model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[cfg.dtype], device_map="auto",
                                                     max_memory=max_memory)
    else:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[cfg.dtype]).to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return HookedModel(model, tokenizer, name=cfg.name)


def weights_id(cfg: ModelConfig) -> str:
    """The model's name, plus its adapter's content hash when it has one (keys checkpoints made with it)."""
    adapter = _adapter_dir(cfg)
    if adapter is None:
        return cfg.name
    import hashlib

    digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    return f"{cfg.name}+{digest[:16]}"


def _adapter_dir(cfg: ModelConfig) -> Path | None:
    """The model's LoRA adapter directory, checked before anything loads."""
    if cfg.adapter is None:
        return None
    where = project_path(cfg.adapter)
    if not (where / "adapter_config.json").is_file() or not (where / "adapter_model.safetensors").is_file():
        raise LoadError(f"model.adapter: {cfg.adapter} holds no peft adapter (adapter_config.json + "
                        "adapter_model.safetensors); a post-trained model's adapter is written by "
                        "`python -m psm_repro posttrain experiment=<its posttrain experiment>`")
    return where


def load_sae(cfg: SAEConfig, model: HookedModel):
    """Load an SAE (registry or disk) and check it fits the model; returns the sae-lens SAE."""
    from sae_lens import SAE

    if cfg.path:
        path = project_path(cfg.path)
        if not (path / "cfg.json").exists():
            raise LoadError(f"sae.path: {cfg.path} holds no sae-lens SAE (no cfg.json)")
        sae = SAE.load_from_disk(str(path), device=str(model.device))
    else:
        sae = SAE.from_pretrained(cfg.release, cfg.sae_id, device=str(model.device))
    hook_name = sae.cfg.metadata.hook_name
    if sae.cfg.d_in != model.d_model:
        raise LoadError(f"SAE {cfg.name} has d_in={sae.cfg.d_in} but model {model.name} has width {model.d_model}")
    if cfg.d_in is not None and cfg.d_in != sae.cfg.d_in:
        raise LoadError(f"sae.d_in={cfg.d_in} but SAE {cfg.name} on disk has d_in={sae.cfg.d_in}")
    if not model.has_hook(hook_name):
        raise LoadError(f"SAE {cfg.name} reads hook {hook_name!r}, which model {model.name} does not have")
    # the SAE sits with the layer it reads (another GPU when the model is split)
    sae = sae.to(device=model.hook_device(hook_name), dtype=_sae_dtype(cfg, sae, model))
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae


def _sae_dtype(cfg: SAEConfig, sae, model: HookedModel) -> torch.dtype:
    if cfg.dtype != "auto":
        return DTYPES[cfg.dtype]
    fp32_bytes = 4 * sum(p.numel() for p in sae.parameters())
    return torch.float32 if fp32_bytes <= 2 ** 30 else model.dtype


def sae_centers_input(sae) -> bool:
    """True for SAEs trained on a HookedTransformer loaded with `center_writing_weights` (gpt2-small-res-jb).

    Such a model writes only zero-mean vectors into the residual stream, so its residual equals the HF
    model's residual minus its mean over d_model (LayerNorm removes that mean anyway, so the two models
    compute the same function). The SAE must see the centred version; see `sae_encode`.
    """
    kwargs = getattr(sae.cfg.metadata, "model_from_pretrained_kwargs", None) or {}
    return bool(kwargs.get("center_writing_weights", False))


def sae_encode(sae, acts_BTD: torch.Tensor) -> torch.Tensor:
    """Latents (B, T, F) of the model's residual at the SAE's hook, in the SAE's own input convention.

    Only the encoder input needs the centring: a decoder vector added to the HF residual differs from
    its centred version by a multiple of the all-ones direction, which the next LayerNorm removes.
    """
    x = acts_BTD.to(sae.dtype)
    if sae_centers_input(sae):
        x = x - x.mean(-1, keepdim=True)
    return sae.encode(x)


def sae_hook_name(sae) -> str:
    return sae.cfg.metadata.hook_name


def sae_prepend_bos(sae) -> bool:
    return bool(getattr(sae.cfg.metadata, "prepend_bos", True))


def sae_first_position(sae) -> int:
    """First sequence position the SAE was trained on (sae-lens's `seqpos_slice`); earlier ones are not read."""
    start = (getattr(sae.cfg.metadata, "seqpos_slice", None) or [None])[0]
    return int(start or 0)
