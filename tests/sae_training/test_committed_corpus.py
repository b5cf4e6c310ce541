"""The committed SAE corpus: its manifest matches its shards and the build defaults, and it holds no text from
experiments/ (every shard decoded and scanned for shared word n-grams)."""

from dataclasses import asdict
from pathlib import Path

import pytest

from psm_repro.config import CorpusConfig, TrainSAEConfig
from psm_repro.sae_training.data import load_corpus
from psm_repro.sae_training.overlap import experiment_ngrams, ngrams

ROOT = Path(__file__).parents[2]
CORPUS = ROOT / CorpusConfig().out_dir


def test_the_committed_corpus_is_complete_and_every_shard_matches_its_hash():
    corpus = load_corpus(CORPUS)  # raises on a missing shard, a bad hash or an unfinished build
    assert CorpusConfig().out_dir == TrainSAEConfig().corpus
    assert corpus.manifest["config"] == asdict(CorpusConfig())  # `build-corpus` with defaults describes it
    for name in ("shakespeare", "narrative", "chats"):
        assert corpus.train[name] and corpus.heldout[name]
        sl = corpus.manifest["slices"][name]
        assert sl["tokens"] == sum(len(d.ids) for d in corpus.train[name])
        assert sl["heldout_tokens"] == sum(len(d.ids) for d in corpus.heldout[name])


@pytest.mark.slow
def test_no_committed_document_shares_a_word_ngram_with_any_experiment_file():
    from transformers import AutoTokenizer

    from psm_repro.core.embedded import ensure_dequantized

    tok = AutoTokenizer.from_pretrained(ensure_dequantized())
    n = CorpusConfig().overlap_ngram
    reference = experiment_ngrams(ROOT / "experiments", n)
    assert len(reference) > 10_000  # the scan really reads the persona, judge and EM files
    corpus = load_corpus(CORPUS)
    hits = []
    for split in (corpus.train, corpus.heldout):
        for docs in split.values():
            for d in docs:
                shared = ngrams(tok.decode(d.ids, skip_special_tokens=True), n) & reference
                if shared:
                    hits.append((d.slice, d.prompt_index, " ".join(sorted(shared)[0])))
    assert hits == []
