"""What every latent does on a reference corpus: one scan per SAE, cached, feeding dashboards and lexicality.

The scan reads the SAE's latents on every token of a reference corpus and keeps, for each latent, its top-k
activations (sequence, position, value), how many tokens it fired on, and a histogram of its positive values.
It is keyed by content: the SAE's weights, the model (config + embedding), the exact token sequences and the
scan settings. A cache written for anything else, or whose tensors do not match their recorded hash, is
rebuilt, never reused (`load_or_scan`).

Reference corpus (`dashboard.reference`): a corpus built by `build-corpus` (its held-out documents by default;
token ids are used as they are when the model's tokenizer built them, otherwise they are decoded with the
embedded tokenizer and re-tokenized), or a Hugging Face `datasets` directory written by `save_to_disk` with a
`text` column.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from psm_repro.config import DashboardConfig
from psm_repro.core.hooked import HookedModel
from psm_repro.core.loading import sae_encode, sae_first_position, sae_hook_name, sae_prepend_bos
from psm_repro.core.outputs import write_bytes
from psm_repro.core.paths import project_path

logger = logging.getLogger(__name__)

FORMAT = 1
HIST_EDGES = torch.logspace(-3, 4, 71)  # 10 bins per decade of positive activation, 1e-3 .. 1e4


class ReferenceError(ValueError):
    """The reference corpus cannot be read; the message names it."""


@dataclass
class FeatureCache:
    """Per-latent statistics over the reference corpus (F latents, K kept activations each)."""

    seqs: list[list[int]]            # the scanned token sequences
    top_values_KF: torch.Tensor      # descending; 0 where a latent fired fewer than K times
    top_seq_KF: torch.Tensor         # which sequence
    top_pos_KF: torch.Tensor         # which position in it
    fired_F: torch.Tensor            # tokens with activation > 0
    hist_FB: torch.Tensor            # counts of positive activations per HIST_EDGES bin
    n_tokens: int                    # tokens read (positions >= the SAE's first position)
    key: dict

    @property
    def density_F(self) -> torch.Tensor:
        return self.fired_F.double() / max(self.n_tokens, 1)

    def top_tokens(self, feature: int) -> list[int]:
        """Token ids at the latent's kept activations (positive ones only), strongest first."""
        keep = self.top_values_KF[:, feature] > 0
        return [self.seqs[s][p] for s, p in zip(self.top_seq_KF[keep, feature].tolist(),
                                                 self.top_pos_KF[keep, feature].tolist())]

    def lexicality(self, feature: int) -> tuple[float, int | None, int]:
        """(share of the kept top activations taken by the most common token, that token, how many were kept)."""
        toks = self.top_tokens(feature)
        if not toks:
            return float("nan"), None, 0
        ids, counts = np.unique(toks, return_counts=True)
        return float(counts.max() / len(toks)), int(ids[counts.argmax()]), len(toks)

    def quantiles(self, feature: int, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[float]:
        """Approximate quantiles of the latent's positive activations (upper edge of the histogram bin)."""
        h = self.hist_FB[feature].double()
        if h.sum() == 0:
            return [float("nan")] * len(qs)
        cum = torch.cumsum(h, 0) / h.sum()
        return [float(HIST_EDGES[min(int(torch.searchsorted(cum, q)) + 1, len(HIST_EDGES) - 1)]) for q in qs]


# --- the reference corpus -------------------------------------------------------------------------------------

def reference_sequences(cfg: DashboardConfig, tokenizer, prepend_bos: bool) -> list[list[int]]:
    """Sequences of `cfg.context_size` tokens (BOS first when the SAE expects it) from the reference
    corpus's document stream, up to `cfg.max_tokens` tokens in all."""
    path = project_path(cfg.reference)
    kind = check_reference(cfg)
    texts_or_ids = _corpus_documents(path, cfg.split, tokenizer) if kind == "corpus" else _dataset_texts(path)
    bos = tokenizer.bos_token_id
    stream: list[int] = []
    n = cfg.context_size - (1 if prepend_bos and bos is not None else 0)
    out: list[list[int]] = []
    for item in texts_or_ids:
        ids = tokenizer(item, add_special_tokens=False)["input_ids"] if isinstance(item, str) else item
        # documents separated by BOS, as in SAE training (psm_repro/sae_training/data.py:sequences)
        stream += ([bos] if bos is not None and ids[:1] != [bos] else []) + list(ids)
        while len(stream) >= n:
            out.append(([bos] if n < cfg.context_size else []) + stream[:n])
            stream = stream[n:]
            if len(out) * n >= cfg.max_tokens:
                return out
    if not out:
        raise ReferenceError(f"dashboard.reference: {cfg.reference} holds fewer than {n} tokens")
    return out


def check_reference(cfg: DashboardConfig) -> str:
    """"corpus" or "datasets", from the files alone (before any model loads); else one line naming it."""
    path = project_path(cfg.reference)
    if (path / "manifest.json").exists():
        return "corpus"
    if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        return "datasets"
    raise ReferenceError(f"dashboard.reference: {cfg.reference} is neither a corpus built by `build-corpus` "
                         "(no manifest.json) nor a `datasets` directory written by save_to_disk")


def _corpus_documents(path: Path, split: str, tokenizer) -> list:
    from psm_repro.sae_training.corpus_build import SLICES
    from psm_repro.sae_training.data import load_corpus

    corpus = load_corpus(path)
    parts = [corpus.heldout, corpus.train] if split == "all" else [getattr(corpus, split)]
    docs = [d for part in parts for s in SLICES for d in part[s]]
    t = corpus.manifest["tokenizer"]
    if t["vocab_size"] == len(tokenizer) and t["bos_token_id"] == tokenizer.bos_token_id:
        return [d.ids for d in docs]
    from transformers import AutoTokenizer

    from psm_repro.core.embedded import DEFAULT, ensure_dequantized

    # the tokenizer of the model that built the corpus (corpora from before the manifest named it: the default)
    built_with = AutoTokenizer.from_pretrained(ensure_dequantized(corpus.manifest.get("model") or DEFAULT))
    return [built_with.decode(d.ids, skip_special_tokens=True) for d in docs]


def _dataset_texts(path: Path) -> list[str]:
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict: its first split
        ds = ds[sorted(ds.keys())[0]]
    if "text" not in ds.column_names:
        raise ReferenceError(f"dashboard.reference: {path} has no 'text' column (columns: {ds.column_names})")
    return list(ds["text"])


# --- keys and the cache file ------------------------------------------------------------------------------------

def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def sae_hash(sae) -> str:
    """sha256 of the SAE's weights (float32, sorted names) and the facts that decide its encoding."""
    state = sae.state_dict()
    facts = json.dumps({"hook": sae_hook_name(sae), "first": sae_first_position(sae),
                        "bos": sae_prepend_bos(sae), "d_sae": sae.cfg.d_sae}, sort_keys=True).encode()
    return _sha(facts, *(k.encode() + state[k].detach().float().cpu().numpy().tobytes() for k in sorted(state)))


def model_hash(model: HookedModel) -> str:
    emb = model.model.get_input_embeddings().weight
    return _sha(model.model.config.to_json_string().encode(), str(emb.dtype).encode(),
                emb.detach().float().cpu().numpy().tobytes())


def cache_key(model: HookedModel, sae, seqs: list[list[int]], cfg: DashboardConfig) -> dict:
    return {"format": FORMAT, "sae": sae_hash(sae), "model": model_hash(model),
            "sequences": _sha(json.dumps(seqs).encode()), "top_k": cfg.top_k,
            "first_position": sae_first_position(sae)}


def cache_path(cfg: DashboardConfig, sae_name: str) -> Path:
    from psm_repro.core.embedded import cache_root

    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_root() / "feature_cache"
    return root / f"{sae_name}.safetensors"


def _tensors(c: FeatureCache) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in c.seqs)
    seqs = torch.full((len(c.seqs), width), -1, dtype=torch.int64)
    for i, s in enumerate(c.seqs):
        seqs[i, : len(s)] = torch.tensor(s)
    return {"seqs": seqs, "top_values": c.top_values_KF.contiguous(), "top_seq": c.top_seq_KF.contiguous(),
            "top_pos": c.top_pos_KF.contiguous(), "fired": c.fired_F.contiguous(), "hist": c.hist_FB.contiguous()}


def _content_hash(tensors: dict[str, torch.Tensor]) -> str:
    return _sha(*(k.encode() + tensors[k].numpy().tobytes() for k in sorted(tensors)))


def save(c: FeatureCache, path: Path) -> None:
    from safetensors.torch import save

    tensors = _tensors(c)
    meta = {"key": json.dumps(c.key, sort_keys=True), "n_tokens": str(c.n_tokens), "content": _content_hash(tensors)}
    write_bytes(path, save(tensors, metadata=meta))


def load(path: Path, key: dict) -> tuple[FeatureCache | None, str]:
    """(the cache, "") when `path` holds a sound cache for `key`; else (None, why it cannot be used)."""
    from safetensors import safe_open

    if not path.exists():
        return None, "no cache yet"
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # a truncated or garbled file: safetensors raises several kinds
        return None, f"unreadable ({type(err).__name__})"
    if json.loads(meta.get("key", "{}")) != key:
        stale = [k for k in key if json.loads(meta.get("key", "{}")).get(k) != key[k]]
        return None, f"stale (different {', '.join(stale)})"
    if meta.get("content") != _content_hash(tensors):
        return None, "corrupt (its tensors do not match their recorded hash)"
    seqs = [[t for t in row if t >= 0] for row in tensors["seqs"].tolist()]
    return FeatureCache(seqs, tensors["top_values"], tensors["top_seq"], tensors["top_pos"], tensors["fired"],
                        tensors["hist"], int(meta["n_tokens"]), key), ""


# --- the scan -------------------------------------------------------------------------------------------------

@torch.no_grad()
def scan(model: HookedModel, sae, seqs: list[list[int]], cfg: DashboardConfig, key: dict) -> FeatureCache:
    """One pass over `seqs`: per latent the top-k activations, the tokens fired on and a value histogram."""
    hook, first = sae_hook_name(sae), sae_first_position(sae)
    n_feat, k = sae.cfg.d_sae, cfg.top_k
    top_v = torch.zeros(k, n_feat)
    top_i = torch.zeros(k, n_feat, dtype=torch.int64)  # flat index: sequence * width + position
    fired = torch.zeros(n_feat, dtype=torch.int64)
    hist = torch.zeros(n_feat * (len(HIST_EDGES) - 1), dtype=torch.int64)
    width = max(len(s) for s in seqs)
    n_tokens = 0
    for start in tqdm(range(0, len(seqs), cfg.batch_size), desc="feature cache scan", leave=False):
        batch = seqs[start:start + cfg.batch_size]
        ids, attn = model.pad_batch(batch)
        feats_BTF = sae_encode(sae, model.activations(ids, attn, hook)).float().cpu()
        read_BT = attn.bool()
        read_BT[:, :first] = False
        b, t = torch.nonzero(read_BT, as_tuple=True)
        rows_NF = feats_BTF[b, t]
        flat_N = (b + start) * width + t
        n_tokens += len(rows_NF)
        fired += (rows_NF > 0).sum(0)
        n_idx, f_idx = torch.nonzero(rows_NF > 0, as_tuple=True)
        bins = torch.bucketize(rows_NF[n_idx, f_idx], HIST_EDGES[1:-1])
        hist.index_add_(0, f_idx * (len(HIST_EDGES) - 1) + bins, torch.ones_like(bins))
        vals = torch.cat([top_v, rows_NF])
        idx = torch.cat([top_i, flat_N[:, None].expand(-1, n_feat)])
        top_v, order = vals.topk(min(k, len(vals)), dim=0)
        top_i = idx.gather(0, order)
        if len(top_v) < k:
            top_v = torch.cat([top_v, torch.zeros(k - len(top_v), n_feat)])
            top_i = torch.cat([top_i, torch.zeros(k - len(top_i), n_feat, dtype=torch.int64)])
    top_i = torch.where(top_v > 0, top_i, torch.zeros_like(top_i))
    return FeatureCache(seqs, top_v, top_i // width, top_i % width, fired,
                        hist.view(n_feat, len(HIST_EDGES) - 1), n_tokens, key)


def load_or_scan(model: HookedModel, sae, sae_name: str, cfg: DashboardConfig) -> FeatureCache:
    """The SAE's feature cache: read when it matches this SAE, model and corpus, else scanned and written."""
    seqs = reference_sequences(cfg, model.tokenizer, sae_prepend_bos(sae))
    key = cache_key(model, sae, seqs, cfg)
    path = cache_path(cfg, sae_name)
    cache, why = load(path, key)
    if cache is not None:
        return cache
    from psm_repro.core.locks import entry_lock

    with entry_lock(path):  # one scan per entry, whatever number of processes ask for it
        cache, why = load(path, key)
        if cache is not None:
            return cache
        logger.info("feature cache %s: %s; scanning %d sequences (%d tokens) once", path, why, len(seqs),
                    sum(map(len, seqs)))
        cache = scan(model, sae, seqs, cfg, key)
        save(cache, path)
    return cache
