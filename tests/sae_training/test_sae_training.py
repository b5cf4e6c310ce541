"""train-sae on the tiny model: sae-lens's SAETrainer fed by the stop-at-layer reader, exact resume after a kill,
held-out metrics per slice, sae-lens's on-disk format, and corpus errors before any model work."""

import json
import random

import pytest
import torch

from psm_repro.config import CorpusConfig, SAEConfig, TrainSAEConfig
from psm_repro.core.loading import load_sae
from psm_repro.sae_training import train as sae_training
from psm_repro.sae_training.corpus_build import CorpusError, Doc, build
from psm_repro.sae_training.data import Corpus, load_corpus, sequences, training_sequences
from psm_repro.sae_training.evaluate import FIRST_POSITION, evaluate
from tests.conftest import WORDS

rng = random.Random(0)
PLAYS = {f"play{i}_gut": " ".join(rng.choice(WORDS) for _ in range(300)) for i in range(4)}
PLAYS["sonnets_gut"] = " ".join(rng.choice(WORDS) for _ in range(200))


@pytest.fixture(scope="module")
def corpus_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    (out / "exp").mkdir()
    cfg = CorpusConfig(generated_docs=24, chunk_docs=12, max_new_tokens=40, heldout_every=4,
                       generation_dtype="float32")
    build(tiny_model, cfg, 0, out / "c", out / "exp", shakespeare_texts=lambda: PLAYS)
    return out / "c"


def _cfg(tmp_path, **kw):
    return TrainSAEConfig(**({"layer": 1, "d_sae": 96, "k": 8, "context_size": 16, "training_tokens": 14 * 4 * 2 * 5,
                              "batch_sequences": 4, "block_batches": 2, "activation_dtype": "float32",
                              "b_dec_init_sequences": 8, "heldout_eval_sequences": 8,
                              "out_dir": str(tmp_path / "sae")} | kw))


def test_train_writes_a_loadable_half_precision_sae_with_a_per_slice_report(tiny_model, corpus_dir, tmp_path):
    cfg = _cfg(tmp_path)
    report = sae_training.train(tiny_model, load_corpus(corpus_dir), cfg, 0, tmp_path / "sae", tmp_path / "ckpt")
    assert report["training_tokens"] == 5 * 2 * 4 * 14
    assert set(report["heldout"]["slices"]) == {"shakespeare", "narrative", "chats"}
    for m in report["heldout"]["slices"].values():
        assert 0 < m["l0"] <= 8 and m["tokens"] > 0 and "ce_loss_recovered" in m
    saved = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert saved["metadata"]["hook_name"] == "model.layers.1" and saved["d_sae"] == 96
    assert saved["metadata"]["prepend_bos"] is True and saved["metadata"]["seqpos_slice"][0] == FIRST_POSITION
    sae = load_sae(SAEConfig(name="trained", path=str(tmp_path / "sae")), tiny_model)
    assert sae.W_dec.shape == (96, 64)
    assert "| narrative |" in (tmp_path / "sae" / "TRAINING_REPORT.md").read_text()
    assert not list((tmp_path / "ckpt").glob("*/progress.json"))  # a finished run leaves no checkpoint

    sae_training.train(tiny_model, load_corpus(corpus_dir), cfg, 0, tmp_path / "sae", tmp_path / "ckpt")
    kept = list(tmp_path.glob("sae.replaced-*"))  # a second run keeps the first
    assert len(kept) == 1 and (kept[0] / "sae_weights.safetensors").exists()


def test_a_killed_run_resumes_to_the_same_sae_as_an_uninterrupted_one(tiny_model, corpus_dir, tmp_path,
                                                                      monkeypatch):
    corpus = load_corpus(corpus_dir)
    whole = _cfg(tmp_path / "a")
    sae_training.train(tiny_model, corpus, whole, 0, tmp_path / "a" / "sae", tmp_path / "ckpt_a")

    real, calls = sae_training.read_block, {"n": 0}

    def dies_on_the_fourth_block(*args):
        calls["n"] += 1
        if calls["n"] == 1 + 4:  # the b_dec estimate, then blocks 0-2 train and checkpoint
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(sae_training, "read_block", dies_on_the_fourth_block)
    cut = _cfg(tmp_path / "b", checkpoint_every_s=0.0)
    with pytest.raises(KeyboardInterrupt):
        sae_training.train(tiny_model, corpus, cut, 0, tmp_path / "b" / "sae", tmp_path / "ckpt_b")
    progress = list((tmp_path / "ckpt_b").glob("*/progress.json"))
    assert len(progress) == 1 and json.loads(progress[0].read_text())["blocks_done"] == 3
    monkeypatch.setattr(sae_training, "read_block", real)
    sae_training.train(tiny_model, corpus, cut, 0, tmp_path / "b" / "sae", tmp_path / "ckpt_b")

    from safetensors.torch import load_file
    a = load_file(tmp_path / "a" / "sae" / "sae_weights.safetensors")
    b = load_file(tmp_path / "b" / "sae" / "sae_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_bias_starts_at_the_mean_activation_of_positions_the_sae_reads(tiny_model, corpus_dir, tmp_path,
                                                                                monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def stop(cfg, sae, *a, **k):
        seen["b_dec"] = sae.b_dec.detach().clone()
        raise Stop

    monkeypatch.setattr(sae_training, "build_trainer", stop)
    corpus = load_corpus(corpus_dir)
    cfg = _cfg(tmp_path)
    with pytest.raises(Stop):
        sae_training.train(tiny_model, corpus, cfg, 0, tmp_path / "sae", tmp_path / "ckpt")
    seqs, _ = training_sequences(corpus, cfg, tiny_model.tokenizer.bos_token_id, 0, 14)
    ids = torch.tensor(seqs[:8])
    acts = tiny_model.activations(ids, torch.ones_like(ids), "model.layers.1")[:, FIRST_POSITION:]
    expected = acts.reshape(-1, acts.shape[-1]).double().mean(0).float()
    assert torch.allclose(seen["b_dec"], expected, atol=1e-6) and expected.norm() > 0


def test_sequences_start_with_bos_and_separate_documents_with_it():
    docs = [Doc("narrative", [5, 6, 7], 0), Doc("chats", [1, 8, 9], 1), Doc("narrative", [4], 2)]
    # stream: 1 5 6 7 | 1 8 9 | 1 4  ->  chunks of 3 after the BOS each sequence starts with
    assert sequences(docs, 4, bos=1) == [[1, 1, 5, 6], [1, 7, 1, 8], [1, 9, 1, 4]]


def test_the_mixture_sets_each_slices_share_and_repeats_a_small_slice():
    docs = {"shakespeare": [Doc("shakespeare", list(range(10, 70)), -1)],
            "narrative": [Doc("narrative", list(range(10, 20)), 1)],
            "chats": []}
    corpus = Corpus({}, docs, {k: [] for k in docs})
    cfg = TrainSAEConfig(context_size=6, training_tokens=400, mixture={"shakespeare": 0.75, "narrative": 0.25})
    seqs, drawn = training_sequences(corpus, cfg, bos=1, seed=0, read_per_sequence=4)
    assert drawn["shakespeare"]["sequences"] == 75 and drawn["narrative"]["sequences"] == 25
    assert len(seqs) == 100 and drawn["narrative"]["unique_sequences"] == 2  # 11 stream tokens -> 2 of 5
    assert sum(s[1] < 20 for s in seqs) >= 25  # narrative sequences start with ids 10-19 (or the BOS before 15)
    with pytest.raises(CorpusError, match="slice 'chats' has no training sequences"):
        training_sequences(corpus, TrainSAEConfig(mixture={"chats": 1.0}), 1, 0, 4)
    with pytest.raises(CorpusError, match="unknown slice 'poems'"):
        training_sequences(corpus, TrainSAEConfig(mixture={"poems": 1.0}), 1, 0, 4)


class _Identity(torch.nn.Module):
    """An 'SAE' that reconstructs perfectly (or returns a constant): FVU and CE recovery have known values."""

    def __init__(self, d, const=None):
        super().__init__()
        self.W_dec = torch.nn.Parameter(torch.zeros(1, d))
        self.cfg = type("C", (), {"d_sae": d})()
        self.const = const

    def encode(self, x):
        return x.abs()

    def decode(self, f):
        return torch.zeros_like(f) + self.const if self.const is not None else f * 0 + self._x

    def forward(self, x):
        return x


def test_evaluate_gives_known_values_for_perfect_and_mean_reconstructions(tiny_model):
    rng_ = random.Random(2)
    seqs = [[1] + [rng_.randrange(3, 60) for _ in range(n)] for n in (9, 5, 12, 7)]
    ids, mask = tiny_model.pad_batch(seqs, side="right")
    keep = mask.bool().clone()
    keep[:, :FIRST_POSITION] = False
    x = tiny_model.activations(ids, mask, "model.layers.1").float()[keep]

    class Perfect(_Identity):
        def encode(self, a):
            self._x = a
            return a.abs()

    perfect = evaluate(tiny_model, Perfect(64), "model.layers.1", seqs, batch=4)
    assert perfect["tokens"] == sum(len(s) - FIRST_POSITION for s in seqs) == x.shape[0]
    assert perfect["fvu"] < 1e-9 and abs(perfect["ce_loss_recovered"] - 1) < 1e-6
    mean = evaluate(tiny_model, _Identity(64, const=x.mean(0)), "model.layers.1", seqs, batch=4)
    assert abs(mean["fvu"] - 1) < 1e-4
    zero = evaluate(tiny_model, _Identity(64, const=torch.zeros(64)), "model.layers.1", seqs, batch=4)
    assert abs(zero["ce_loss_recovered"]) < 1e-6
    one_by_one = [evaluate(tiny_model, Perfect(64), "model.layers.1", [s], with_ce=True) for s in seqs]
    clean = sum(o["ce_clean"] * (o["tokens"] - 1) for o in one_by_one) / sum(o["tokens"] - 1 for o in one_by_one)
    assert abs(clean - perfect["ce_clean"]) < 1e-5  # right padding changes nothing


@pytest.mark.parametrize("breakage, message", [
    ("missing", "does not exist; build it"),
    ("empty", "manifest.json: missing"),
    ("corrupt", "generated-00001.safetensors: sha256 does not match"),
    ("unfinished", "the build did not finish"),
])
def test_a_bad_corpus_fails_in_one_line_before_the_model_loads(corpus_dir, tmp_path, monkeypatch, capsys,
                                                               breakage, message):
    import shutil

    from psm_repro.cli import main
    from psm_repro.pipeline import jobs as pipeline

    target = tmp_path / "c"
    if breakage != "missing":
        target.mkdir()
    if breakage in ("corrupt", "unfinished"):
        shutil.copytree(corpus_dir, target, dirs_exist_ok=True)
    if breakage == "corrupt":
        data = bytearray((target / "generated-00001.safetensors").read_bytes())
        data[-1] ^= 1
        (target / "generated-00001.safetensors").write_bytes(bytes(data))
    if breakage == "unfinished":
        m = json.loads((target / "manifest.json").read_text())
        (target / "manifest.json").write_text(json.dumps(m | {"complete": False}))
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded before the corpus check"))
    assert main(["train-sae", f"train_sae.corpus={target}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
