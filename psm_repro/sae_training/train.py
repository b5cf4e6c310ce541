"""`train-sae`: the embedded default model's SAE, trained by sae-lens's `SAETrainer` on a built corpus.

Activations come from the finder's stop-at-layer pass (`HookedModel.activations`), not a full forward, read in
blocks of `block_batches` batches; a block's tokens are shuffled together (seeded by the block's index) and fed to
the trainer one batch at a time through its public `step`. Checkpoints (the SAE's parameters, sae-lens's trainer
state and the number of blocks done) fall between blocks, so a run killed and resumed sees exactly the batches an
uninterrupted run would. A finished SAE is never overwritten: an earlier one is moved aside.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from psm_repro.config import TrainSAEConfig
from psm_repro.core.embedded import cache_root
from psm_repro.core.hooked import HookedModel
from psm_repro.core.outputs import write_json, write_text
from psm_repro.sae_training.data import Corpus, heldout_sequences, training_sequences
from psm_repro.sae_training.evaluate import FIRST_POSITION, evaluate, meets, render_report

logger = logging.getLogger(__name__)

PARAMS_FILE = "sae_params.pt"
PROGRESS_FILE = "progress.json"


def run_key(cfg: TrainSAEConfig, corpus: Corpus, seed: int, model_name: str) -> str:
    """What a checkpoint belongs to: the training settings, the corpus shards and the seed."""
    settings = {k: v for k, v in vars(cfg).items() if k not in ("checkpoint_every_s", "heldout_eval_sequences",
                                                                 "out_dir") and not k.startswith("target_")}
    blob = json.dumps([settings, [s["sha256"] for s in corpus.manifest["shards"]], seed, model_name],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def hook_name_of(cfg: TrainSAEConfig) -> str:
    return cfg.hook_name or f"model.layers.{cfg.layer}"


def reader_for(model: HookedModel, dtype: str) -> HookedModel:
    """The model that reads training activations: `model` itself, or a copy cast to `dtype`."""
    want = getattr(torch, dtype)
    if model.dtype == want:
        return model
    return HookedModel(copy.deepcopy(model.model).to(want), model.tokenizer, model.name)


def read_block(reader: HookedModel, hook_name: str, seqs: list[list[int]], batch: int) -> torch.Tensor:
    """float32 activations (tokens, d_model) at positions >= FIRST_POSITION of equal-length sequences."""
    out = []
    for i in range(0, len(seqs), batch):
        ids = torch.tensor(seqs[i:i + batch])
        acts = reader.activations(ids, torch.ones_like(ids), hook_name)[:, FIRST_POSITION:]
        out.append(acts.float().reshape(-1, acts.shape[-1]))
    return torch.cat(out)


def build_sae(cfg: TrainSAEConfig, d_in: int, device: str, model_name: str):
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae_cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, dtype="float32", device=device,
                                    aux_loss_coefficient=cfg.aux_loss_coefficient)
    sae_cfg.metadata.model_name = model_name
    sae_cfg.metadata.hook_name = hook_name_of(cfg)
    sae_cfg.metadata.context_size = cfg.context_size
    sae_cfg.metadata.seqpos_slice = (FIRST_POSITION, None)
    sae_cfg.metadata.prepend_bos = True  # every sequence starts with BOS (sae_data.sequences)
    return TopKTrainingSAE(sae_cfg)


def build_trainer(cfg: TrainSAEConfig, sae, n_steps: int, batch_tokens: int, device: str):
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_steps * batch_tokens, train_batch_size_samples=batch_tokens, lr=cfg.lr,
        lr_end=cfg.lr / 10, lr_warm_up_steps=min(50, n_steps // 10), lr_decay_steps=max(1, n_steps // 5),
        dead_feature_window=cfg.dead_feature_window, feature_sampling_window=max(cfg.dead_feature_window, 2000),
        device=device, autocast=cfg.autocast, logger=LoggingConfig(log_to_wandb=False))
    return SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))


def save_checkpoint(path: Path, sae, trainer, blocks_done: int, seconds: float) -> None:
    """Replace the checkpoint at `path` as a whole: a kill mid-save leaves the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=path.parent, prefix=".staged-"))
    torch.save(sae.state_dict(), staged / PARAMS_FILE)
    trainer.save_trainer_state(staged)
    write_json(staged / PROGRESS_FILE, {"blocks_done": blocks_done, "seconds": seconds})
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    staged.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def train(model: HookedModel, corpus: Corpus, cfg: TrainSAEConfig, seed: int, out_dir: Path,
          checkpoint_root: Path | None = None, model_key: str | None = None) -> dict:
    """Train (or resume), measure on held-out sequences, save weights (half precision) + report to `out_dir`.

    `model_key` names the model's weights in the checkpoint key (default: its name; a model with an adapter
    passes the adapter's hash too, so a retrained adapter never resumes another's SAE)."""
    torch.manual_seed(seed)
    tok = model.tokenizer
    hook_name = hook_name_of(cfg)
    read_per_seq = cfg.context_size - FIRST_POSITION
    seqs, drawn = training_sequences(corpus, cfg, tok.bos_token_id, seed, read_per_seq)
    block_seqs = cfg.batch_sequences * cfg.block_batches
    n_blocks = len(seqs) // block_seqs
    if n_blocks == 0:
        raise ValueError(f"train_sae.training_tokens: {cfg.training_tokens} is less than one block "
                         f"({block_seqs * read_per_seq} tokens)")
    batch_tokens = cfg.batch_sequences * read_per_seq
    device = str(model.hook_device(hook_name))
    sae = build_sae(cfg, model.d_model, device, model.name)
    ckpt = (checkpoint_root or cache_root() / "sae_training") / run_key(cfg, corpus, seed, model_key or model.name)
    reader = reader_for(model, cfg.activation_dtype)
    resume = (ckpt / PROGRESS_FILE).exists()
    if resume:
        sae.load_state_dict(torch.load(ckpt / PARAMS_FILE, map_location=device))
    elif cfg.b_dec_init == "mean":
        with torch.no_grad():
            sae.b_dec.copy_(read_block(reader, hook_name, seqs[: cfg.b_dec_init_sequences], cfg.batch_sequences)
                            .double().mean(0).float())
    trainer = build_trainer(cfg, sae, n_blocks * cfg.block_batches, batch_tokens, device)
    start_block, elapsed = 0, 0.0
    if resume:
        trainer.load_trainer_state(ckpt)
        progress = json.loads((ckpt / PROGRESS_FILE).read_text())
        start_block, elapsed = progress["blocks_done"], progress["seconds"]
        logger.info("resuming from %s: %d of %d blocks done", ckpt, start_block, n_blocks)
    logger.info("training on %d tokens (%d blocks) at %s; checkpoints in %s", n_blocks * block_seqs * read_per_seq,
                n_blocks, hook_name, ckpt)
    last_save = time.time()
    started = time.time() - elapsed
    for b in tqdm(range(start_block, n_blocks), initial=start_block, total=n_blocks, desc="training SAE"):
        acts = read_block(reader, hook_name, seqs[b * block_seqs:(b + 1) * block_seqs], cfg.batch_sequences)
        order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed * 1_000_003 + b))
        for batch in acts[order].split(batch_tokens):
            trainer.maybe_reset_sparsity()
            trainer.step(batch)
            trainer.n_training_steps += 1
        if time.time() - last_save >= cfg.checkpoint_every_s and b + 1 < n_blocks:
            save_checkpoint(ckpt, sae, trainer, b + 1, time.time() - started)
            last_save = time.time()
    train_seconds = time.time() - started
    trainer.set_final_sae_metadata()
    del reader
    report = _measure(model, sae, cfg, corpus, seed, hook_name)
    report |= {"training_tokens": n_blocks * block_seqs * read_per_seq, "train_seconds": round(train_seconds),
               "tokens_per_s": n_blocks * block_seqs * read_per_seq / max(train_seconds, 1e-9),
               "device": _device_name(device), "training_mix": drawn}
    _save(sae, report, out_dir)
    shutil.rmtree(ckpt, ignore_errors=True)
    return report


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import os

    return f"CPU ({os.cpu_count()} cores)"


def _measure(model: HookedModel, sae, cfg: TrainSAEConfig, corpus: Corpus, seed: int, hook_name: str) -> dict:
    sae.eval()
    slices = {name: evaluate(model, sae, hook_name, s, desc=f"held-out {name}")
              for name, s in heldout_sequences(corpus, cfg, model.tokenizer.bos_token_id, seed).items()}
    fired = torch.stack([m.pop("fired") for m in slices.values()]).any(0)
    dead = 1 - fired.float().mean().item()
    return {"layer": cfg.layer, "hook_name": hook_name, "architecture": "topk", "k": cfg.k, "d_sae": cfg.d_sae,
            "lr": cfg.lr, "b_dec_init": cfg.b_dec_init, "dead_feature_window": cfg.dead_feature_window,
            "aux_loss_coefficient": cfg.aux_loss_coefficient, "activation_dtype": cfg.activation_dtype,
            "seed": seed, "corpus_dir": cfg.corpus,
            "corpus": {k: corpus.manifest[k] for k in ("sources", "slices", "overlap", "heldout", "shards")},
            "heldout": {"slices": slices, "dead_fraction": dead}, "model": model.name,
            "targets": {"fvu": cfg.target_fvu, "ce_loss_recovered": cfg.target_ce_recovered,
                        "dead_fraction": cfg.target_dead_fraction, "size_mb": cfg.target_size_mb}}


def _save(sae, report: dict, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "sae"
        sae.save_inference_model(str(staged))
        _to_half(staged)
        report["size_mb"] = sum(p.stat().st_size for p in staged.glob("*.safetensors")) / 2**20
        report["meets"] = meets(report["heldout"]["slices"], report["heldout"]["dead_fraction"], report["size_mb"],
                                report["targets"])
        write_json(staged / "training_report.json", report)
        write_text(staged / "TRAINING_REPORT.md", render_report(report))
        if out_dir.exists():
            # never lose an earlier SAE: it moves aside, next to the new one
            shutil.move(str(out_dir), str(out_dir.with_name(f"{out_dir.name}.replaced-{int(time.time())}")))
        staged.rename(out_dir)


def _to_half(sae_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    for f in sae_dir.glob("*.safetensors"):
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}
        save_file(tensors, f)
