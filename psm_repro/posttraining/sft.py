"""Resumable LoRA training (peft) on fixed examples: the SFT arm and the control arm of `posttrain` share it.

The data order of every epoch is a pure function of the seed, and a checkpoint (adapter, optimizer, scheduler,
step, loss curve) is written atomically every `checkpoint_every` steps, so a run killed at any point and
started again ends with the weights an uninterrupted run gets, bit for bit. A finished arm leaves its adapter in
the checkpoint directory, and a later run with the same key loads it instead of training again.
"""

from __future__ import annotations

import io
import json
import os
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from psm_repro.core.hooked import HookedModel
from psm_repro.core.locks import entry_lock
from psm_repro.core.outputs import write_bytes, write_json, write_text
from psm_repro.posttraining.data import IGNORE, Example

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
ADAPTER_FILE = "adapter.safetensors"
LOG_FILE = "train_log.json"


def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Example indices per step: each epoch a seeded shuffle, cut into batches."""
    steps = []
    for epoch in range(epochs):
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        steps += [order[b:b + batch_size] for b in range(0, n, batch_size)]
    return steps


def _lora(model: HookedModel, rank: int, seed: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the adapters' initial weights
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model.model, cfg)


def _save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(path, buf.getvalue())  # atomic: a kill mid-write leaves the previous checkpoint


def train_lora(model: HookedModel, examples: list[Example], *, rank: int, lr: float, batch_size: int, epochs: int,
               checkpoint_every: int, seed: int, ckpt_dir: Path, desc: str,
               on_step: Callable[[int], None] | None = None, export_dir: Path | None = None,
               base_name: str | None = None) -> dict:
    """Train LoRA adapters on `examples` (or resume, or load a finished arm), merge them into `model` in place.

    Returns the training log: the loss of every step, tokens seen, tokens with a loss, seconds. `on_step(step)`
    is called after each step's checkpoint decision (tests use it to stop a run). With `export_dir`, the finished
    adapter is also saved there with peft's `save_pretrained` (`base_name` recorded as its base model).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save

    peft_model = _lora(model, rank, seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = batch_order(len(examples), batch_size, epochs, seed)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / len(steps)))
    with entry_lock(ckpt_dir):  # one writer per arm across processes
        if (ckpt_dir / LOG_FILE).exists():
            logger.info("%s: trained already, loading %s", desc, ckpt_dir / ADAPTER_FILE)
            set_peft_model_state_dict(peft_model, load_file(ckpt_dir / ADAPTER_FILE))
            log = json.loads((ckpt_dir / LOG_FILE).read_text())
        else:
            log = _train(peft_model, params, opt, sched, steps, examples, model, checkpoint_every, ckpt_dir, desc,
                         on_step)
            write_bytes(ckpt_dir / ADAPTER_FILE, save({k: v.contiguous() for k, v in
                                                      get_peft_model_state_dict(peft_model).items()}))
            write_json(ckpt_dir / LOG_FILE, log)
            (ckpt_dir / STATE_FILE).unlink(missing_ok=True)
    peft_model.eval()
    if export_dir is not None:
        export_adapter(peft_model, export_dir, base_name, log)
    model.model = peft_model.merge_and_unload()
    model.model.eval()
    for p in model.model.parameters():
        p.requires_grad_(False)
    return log


def _train(peft_model, params, opt, sched, steps, examples, model, checkpoint_every, ckpt_dir, desc, on_step) -> dict:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    log = {"loss": [], "tokens": 0, "loss_tokens": 0, "seconds": 0.0, "steps": len(steps),
           "examples": len(examples)}
    start_step = 0
    if (ckpt_dir / STATE_FILE).exists():
        state = torch.load(ckpt_dir / STATE_FILE, weights_only=False)
        set_peft_model_state_dict(peft_model, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_step, log = state["step"], state["log"]
        logger.info("%s: resuming at step %d of %d", desc, start_step, len(steps))
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    peft_model.train()
    started = time.time() - log["seconds"]
    for step in tqdm(range(start_step, len(steps)), initial=start_step, total=len(steps), desc=desc):
        batch = [examples[i] for i in steps[step]]
        width = max(len(e.ids) for e in batch)
        ids = torch.tensor([e.ids + [pad] * (width - len(e.ids)) for e in batch], device=model.device)
        labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in batch], device=model.device)
        attn = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch], device=model.device)
        loss = peft_model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log["loss"].append(round(loss.item(), 5))
        log["tokens"] += int(attn.sum())
        log["loss_tokens"] += int((labels[:, 1:] != IGNORE).sum())
        log["seconds"] = round(time.time() - started, 1)
        if (step + 1) % checkpoint_every == 0 and step + 1 < len(steps):
            _save_state(ckpt_dir / STATE_FILE, {"adapter": get_peft_model_state_dict(peft_model),
                                                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                "step": step + 1, "log": log})
        if on_step is not None:
            on_step(step + 1)
    return log


def adapter_readme(base_name: str | None, log: dict) -> str:
    return (f"# LoRA adapter for {base_name or 'the base model'}, trained by psm_repro's `posttrain`\n\n"
            f"{log['examples']} examples, {log['steps']} steps, {log['tokens']:,} tokens ({log['loss_tokens']:,} with a "
            f"loss), {log['seconds']:.0f} s; the loss of every step is in train_log.json. peft format "
            "(adapter_config.json + adapter_model.safetensors): a model config's `adapter:` merges it into the base "
            "weights on load (configs/model/gemma3_270m_posttrained.yaml). What it was trained on, and why: "
            "docs/posttraining.md.\n")


def export_adapter(peft_model, export_dir: Path, base_name: str | None, log: dict) -> None:
    """Save the adapter with peft's `save_pretrained` into `export_dir`, never overwriting other weights.

    The same adapter already there is left as it is; a different one is moved aside to
    `<export_dir>.replaced-<time>` first. The directory appears whole or not at all (written beside, renamed)."""
    import shutil
    import tempfile

    export_dir.parent.mkdir(parents=True, exist_ok=True)
    new_dir = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.", dir=export_dir.parent))
    try:
        if base_name is not None:
            for c in peft_model.peft_config.values():
                c.base_model_name_or_path = base_name  # not the machine's cache path
        peft_model.save_pretrained(str(new_dir), save_embedding_layers=False)  # LoRA only; no Hub lookup
        write_json(new_dir / "train_log.json", log)
        write_text(new_dir / "README.md", adapter_readme(base_name, log))  # peft's card template holds a cache path
        weights = "adapter_model.safetensors"
        if export_dir.exists():
            if (export_dir / weights).is_file() and \
                    (export_dir / weights).read_bytes() == (new_dir / weights).read_bytes():
                return
            aside = export_dir.with_name(f"{export_dir.name}.replaced-{int(time.time())}")
            export_dir.rename(aside)
            logger.info("an adapter with other weights was at %s: moved to %s", export_dir, aside)
        umask = os.umask(0)
        os.umask(umask)
        for f in new_dir.iterdir():  # the modes `open` would give, not a temp file's 0600
            f.chmod(0o666 & ~umask)
        new_dir.chmod(0o777 & ~umask)
        new_dir.rename(export_dir)
        logger.info("post-trained adapter written to %s", export_dir)
    finally:
        shutil.rmtree(new_dir, ignore_errors=True)
