"""LoRA fine-tuning of a chat model on (user, assistant) pairs with peft; loss on the assistant tokens only."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from psm_repro.config import EMConfig
from psm_repro.core.chat import encode_chat, encode_prompt
from psm_repro.core.hooked import HookedModel

logger = logging.getLogger(__name__)

IGNORE = -100  # label value the HF loss skips


def tokenize_chats(tokenizer, chats: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per chat: the prompt through the model's chat format, then the loss on the reply and
    the end of turn exactly as the format writes it (Gemma `<end_of_turn>`, Llama `<|eot_id|>`, a base model's
    newline), so the tuned model ends its turns the way generation stops them."""
    out = []
    for user, reply in chats:
        turn = [{"role": "user", "content": user}]
        start = len(encode_prompt(tokenizer, turn))  # encode_chat checks the prompt is a prefix of the chat
        ids = encode_chat(tokenizer, turn + [{"role": "assistant", "content": reply}]).ids
        out.append((ids, [IGNORE] * start + ids[start:]))
    return out


def finetune(model: HookedModel, chats: list[tuple[str, str]], cfg: EMConfig, seed: int, out_dir: Path) -> dict:
    """Train LoRA adapters on `chats`, save them (safetensors) to `out_dir`, merge them into `model` in place.

    Returns the training log (loss per epoch, tokens, seconds). The merged model is a plain HF model
    again, so hooks, SAEs and steering work on it exactly as on the base model.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = tokenize_chats(model.tokenizer, chats)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model.model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    pad = model.tokenizer.pad_token_id
    peft_model.train()
    start, log = time.time(), []
    steps = cfg.epochs * ((len(data) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / steps))
    n_tokens = 0
    with tqdm(total=steps, desc=f"fine-tuning ({out_dir.name})") as bar:
        for epoch in range(cfg.epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            total, count = 0.0, 0
            for b in range(0, len(order), cfg.batch_size):
                batch = [data[i] for i in order[b:b + cfg.batch_size]]
                width = max(len(ids) for ids, _ in batch)
                ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in batch], device=model.device)
                labels = torch.tensor([y + [IGNORE] * (width - len(y)) for _, y in batch], device=model.device)
                attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch], device=model.device)
                loss = peft_model(input_ids=ids, attention_mask=attn, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                total += loss.item() * len(batch)
                count += len(batch)
                n_tokens += int(attn.sum())
                bar.update(1)
            log.append({"epoch": epoch + 1, "mean_loss": total / count})
            logger.info("%s epoch %d: loss %.3f", out_dir.name, epoch + 1, total / count)
    peft_model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))  # adapter_config.json + adapter_model.safetensors
    model.model = peft_model.merge_and_unload()
    model.model.eval()
    for p in model.model.parameters():
        p.requires_grad_(False)
    return {"chats": len(data), "epochs": cfg.epochs, "train_tokens": n_tokens, "seconds": round(time.time() - start, 1),
            "lora_rank": cfg.lora_rank, "lr": cfg.lr, "loss_by_epoch": log}
