"""Training and held-out sequences from a built corpus (psm_repro/sae_training/corpus_build.py), checked before any
model work."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from psm_repro.config import CorpusConfig, TrainSAEConfig
from psm_repro.core.embedded import sha256_of
from psm_repro.sae_training.corpus_build import FORMAT, SLICES, CorpusError, Doc, is_heldout, load_shard


@dataclass
class Corpus:
    manifest: dict
    train: dict[str, list[Doc]]
    heldout: dict[str, list[Doc]]


def load_corpus(corpus_dir: Path) -> Corpus:
    """Read a corpus directory, verifying the manifest and every shard's sha256; one-line errors name the file."""
    manifest_path = corpus_dir / "manifest.json"
    if not corpus_dir.is_dir():
        raise CorpusError(f"train_sae.corpus: {corpus_dir} does not exist; build it with `python -m psm_repro "
                          "build-corpus`")
    if not manifest_path.exists():
        raise CorpusError(f"{manifest_path}: missing (an empty or unfinished corpus directory); run `build-corpus`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise CorpusError(f"{manifest_path}: not valid JSON ({err.msg})") from None
    if manifest.get("format") != FORMAT:
        raise CorpusError(f"{manifest_path}: format {manifest.get('format')!r}, this version reads {FORMAT}")
    if not manifest.get("complete"):
        raise CorpusError(f"{manifest_path}: the build did not finish; re-run `build-corpus` to complete it")
    if not manifest.get("shards"):
        raise CorpusError(f"{manifest_path}: lists no shards")
    for shard in manifest["shards"]:
        path = corpus_dir / shard["file"]
        if not path.exists():
            raise CorpusError(f"{path}: listed in the manifest but missing")
        if sha256_of(path) != shard["sha256"]:
            raise CorpusError(f"{path}: sha256 does not match the manifest (corrupt or changed shard)")
    cfg = CorpusConfig(**manifest["config"])
    train: dict[str, list[Doc]] = {s: [] for s in SLICES}
    heldout: dict[str, list[Doc]] = {s: [] for s in SLICES}
    for shard in manifest["shards"]:
        docs, meta = load_shard(corpus_dir / shard["file"])
        names = meta.get("works", [None] * len(docs))
        for doc, name in zip(docs, names):
            (heldout if is_heldout(doc, name, cfg) else train)[doc.slice].append(doc)
    return Corpus(manifest, train, heldout)


def check_tokenizer(corpus: Corpus, tokenizer, corpus_dir: Path) -> None:
    t = corpus.manifest["tokenizer"]
    if t["vocab_size"] != len(tokenizer) or t["bos_token_id"] != tokenizer.bos_token_id:
        raise CorpusError(f"{corpus_dir}/manifest.json: built with another tokenizer (vocab {t['vocab_size']}, "
                          f"BOS {t['bos_token_id']}); this model has vocab {len(tokenizer)}, BOS "
                          f"{tokenizer.bos_token_id}")


def sequences(docs: list[Doc], context_size: int, bos: int) -> list[list[int]]:
    """BOS + `context_size - 1` tokens of the slice's document stream; documents are separated by BOS
    (a chat already starts with it), so every sequence's attention sink sits at position 0 as in a prompt."""
    stream: list[int] = []
    for d in docs:
        stream += d.ids if d.ids[:1] == [bos] else [bos] + d.ids
    n = context_size - 1
    return [[bos] + stream[i:i + n] for i in range(0, len(stream) - n + 1, n)]


def training_sequences(corpus: Corpus, cfg: TrainSAEConfig, bos: int, seed: int, read_per_sequence: int
                       ) -> tuple[list[list[int]], dict]:
    """The training sequences in training order: each slice gets `cfg.mixture` of the token budget, drawn in
    seeded epochs (a slice smaller than its share repeats), then all are shuffled together."""
    unknown = set(cfg.mixture) - set(SLICES)
    if unknown:
        raise CorpusError(f"train_sae.mixture: unknown slice {sorted(unknown)[0]!r}; slices are {', '.join(SLICES)}")
    rng = random.Random(seed)
    total = sum(cfg.mixture.values())
    out: list[list[int]] = []
    drawn = {}
    for name in SLICES:
        share = cfg.mixture.get(name, 0.0) / total
        if share <= 0:
            continue
        pool = sequences(corpus.train[name], cfg.context_size, bos)
        if not pool:
            raise CorpusError(f"train_sae.mixture: slice {name!r} has no training sequences in {cfg.corpus}")
        need = round(share * cfg.training_tokens / read_per_sequence)
        picked: list[list[int]] = []
        while len(picked) < need:
            epoch = pool[:]
            rng.shuffle(epoch)
            picked += epoch[: need - len(picked)]
        out += picked
        drawn[name] = {"sequences": need, "unique_sequences": len(pool), "epochs": round(need / len(pool), 2),
                       "tokens": need * read_per_sequence}
    rng.shuffle(out)
    return out, drawn


def heldout_sequences(corpus: Corpus, cfg: TrainSAEConfig, bos: int, seed: int) -> dict[str, list[list[int]]]:
    """Up to `cfg.heldout_eval_sequences` seeded held-out sequences per slice."""
    out = {}
    for name in SLICES:
        seqs = sequences(corpus.heldout[name], cfg.context_size, bos)
        random.Random(seed).shuffle(seqs)
        if seqs:
            out[name] = seqs[: cfg.heldout_eval_sequences]
    return out
