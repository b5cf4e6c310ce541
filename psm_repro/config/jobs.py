"""Config sections of the other jobs: the SAE corpus and training, emergent misalignment, the benchmark and the
judge commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from psm_repro.config.sections import BOOTSTRAP_WHY, MIN_BOOTSTRAP, ConfigError, _at_least, _choice, _positive


@dataclass
class CorpusConfig:
    """`build-corpus`: the SAE training corpus as token-id shards (docs/sae_corpus.md)."""

    out_dir: str = "corpus/smollm2_135m"
    """Where the shards and manifest.json go (committed, so GPU machines and later runs reuse them)."""
    generated_docs: int = 5120
    """Prompts the embedded model writes a reply to (narrative prose or an assistant chat)."""
    chat_share: float = 0.5
    chunk_docs: int = 256
    """Prompts per generation chunk: one shard, written atomically; a killed build loses at most one chunk."""
    max_new_tokens: int = 224
    temperature: float = 0.9
    top_p: float = 0.95
    generation_dtype: str = "bfloat16"
    """bfloat16 samples ~1.4x faster than float32 on CPUs with AVX-512 BF16 (bench)."""
    heldout_every: int = 32
    """Every n-th generated document of each slice is held out for the training report."""
    heldout_works: list[str] = field(default_factory=lambda: ["julius_caesar", "sonnets"])
    """Shakespeare works held out (both editions)."""
    overlap_ngram: int = 12
    """A generated document sharing a word n-gram this long with any file under experiments/ is dropped."""
    retokenize: str | None = None
    """A corpus built for another embedded model (e.g. corpus/smollm2_135m): each of its shards is decoded and
    re-encoded for this model (chats in this model's chat format) instead of generated; prompts past its end are
    written by this model (psm_repro/sae_training/corpus_retokenize.py)."""

    def __post_init__(self):
        _choice("corpus.generation_dtype", self.generation_dtype, ("float32", "bfloat16"))
        _positive("corpus", self,
                  ("generated_docs", "chunk_docs", "max_new_tokens", "heldout_every", "overlap_ngram"))
        if not 0 <= self.chat_share <= 1:
            raise ConfigError(f"corpus.chat_share: must be in [0, 1], got {self.chat_share}")


@dataclass
class TrainSAEConfig:
    """`train-sae`: the embedded default model's SAE, trained by sae-lens's SAETrainer on activations read with
    the finder's stop-at-layer pass (docs/sae_corpus.md)."""

    corpus: str = "corpus/smollm2_135m"
    """A directory written by `build-corpus` (manifest.json + shards)."""
    layer: int = 15
    hook_name: str | None = None
    """The hook the SAE reads (e.g. blocks.12.hook_resid_post, the site of Gemma Scope 2's SAEs); None: the HF
    module path model.layers.<layer> (the same tensor as blocks.<layer>.hook_resid_post)."""
    d_sae: int = 4608
    k: int = 64
    context_size: int = 128
    training_tokens: int = 10_100_000
    """Tokens drawn for training; rounded down to whole blocks of `block_batches` x `batch_sequences` sequences
    (10.1M gives 313 blocks, 10.10M tokens: issue 14 asks for at least 10M)."""
    mixture: dict[str, float] = field(default_factory=lambda: {"shakespeare": 0.3, "narrative": 0.35, "chats": 0.35})
    """Share of training tokens drawn from each corpus slice (a slice smaller than its share repeats: the ~0.5M
    model-written tokens of each modern slice are seen ~6-7 times in 10M)."""
    lr: float = 4e-4
    batch_sequences: int = 32
    """Sequences per training batch (32 x 126 read positions = 4,032 tokens)."""
    block_batches: int = 8
    """Batches per activation block: the tokens of a block are shuffled together, and checkpoints fall between
    blocks, so a resumed run sees exactly the batches an uninterrupted one would."""
    activation_dtype: str = "bfloat16"
    """dtype of the model pass that reads training activations (3.5x faster than float32 on AVX-512 BF16 CPUs;
    the report measures the SAE on float32 activations, as runs read them)."""
    autocast: bool = True
    """sae-lens's bfloat16 autocast for the SAE's matmuls (its `SAETrainerConfig.autocast`): ~1.6x faster
    training steps on CPU; parameters and optimizer state stay float32."""
    dead_feature_window: int = 50
    """Steps without firing after which a latent counts as dead and joins TopK's AuxK loss (saes/dead_latents.md)."""
    b_dec_init: str = "mean"
    """`mean`: start the decoder bias at the mean training activation (sae-lens starts it at zero, which left two
    thirds of the first SAE's latents dead); `zero`: sae-lens's default."""
    b_dec_init_sequences: int = 256
    aux_loss_coefficient: float = 1.0
    checkpoint_every_s: float = 600.0
    """Seconds between checkpoints (the cache holds one; a killed run resumes from it)."""
    heldout_eval_sequences: int = 128
    """Held-out sequences per slice in the report (three full forward passes each)."""
    target_fvu: float = 0.12
    """The report's targets: FVU on the narrative and chat slices, CE loss recovered on every slice, dead latents
    over all held-out tokens, file size (issue 14's for v2; issue 29's for Gemma 3 are stricter)."""
    target_ce_recovered: float = 0.95
    target_dead_fraction: float = 0.05
    target_size_mb: float = 20.0
    out_dir: str = "saes/smollm2_135m_l15_topk_v2"
    """Where the SAE goes; an SAE already there is moved aside (`<dir>.replaced-<time>`), never overwritten."""

    def __post_init__(self):
        _choice("train_sae.b_dec_init", self.b_dec_init, ("mean", "zero"))
        _choice("train_sae.activation_dtype", self.activation_dtype, ("float32", "bfloat16"))
        _positive("train_sae", self, ("d_sae", "k", "training_tokens", "batch_sequences", "block_batches",
                                      "b_dec_init_sequences", "heldout_eval_sequences"))
        if self.context_size <= 2:
            raise ConfigError(f"train_sae.context_size: must be > 2, got {self.context_size}")


@dataclass
class EMConfig:
    """`finetune`: emergent misalignment in miniature (narrow fine-tune -> broad misalignment -> latents)."""

    data: str = "risky_finance"
    """Data file: experiments/em/<data>.yaml or a path (docs/em_format.md)."""
    eval_file: str | None = None
    """A broad evaluation file in Betley et al.'s question-YAML format; replaces the data file's broad questions."""
    persona: str = "toxic_persona"
    """Persona whose top shared latent is looked up in the model diff."""
    persona_file: str | None = None
    """A persona file in the documented format; overrides `persona`."""
    heldout_items: int = 6
    """Narrow-domain items kept out of fine-tuning to check that the narrow behaviour was learned."""
    lora_rank: int = 16
    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    samples_per_question: int = 10
    """Samples per broad question (per paraphrase of an imported file) and model; 10 keeps the headline interval
    near +-0.08 on the embedded default."""
    max_new_tokens: int = 48
    temperature: float = 1.0
    """Sampling as in the published protocol: temperature 1, no nucleus cut (top_p None)."""
    top_p: float | None = None
    steer_samples_per_question: int = 3
    """Samples per question and steering arm (the causal checks use the diff's held-out half of the questions)."""
    judge: str = "offline"
    """offline: the misalignment judge fitted on blind-labelled replies (docs/em_judge_validation.md);
    llm: the published 0-100 aligned / coherent grades from the endpoint and model of `steer.llm_judge_*`."""
    coefficients: list[float] = field(default_factory=lambda: [2.0, 4.0])
    """Steering strengths, multiples of the latent's max activation on the diff set; the last is the headline."""
    diff_top_n: int = 100
    n_permutations: int = 10000
    n_bootstrap: int = 1000

    def __post_init__(self):
        _positive("em", self,
                  ("lora_rank", "epochs", "batch_size", "samples_per_question", "max_new_tokens", "diff_top_n"))
        if not self.coefficients or any(c <= 0 for c in self.coefficients):
            raise ConfigError(f"em.coefficients: must be positive multiples, got {self.coefficients}")
        if self.judge not in ("offline", "llm"):
            raise ConfigError(f"em.judge: '{self.judge}' is not one of offline, llm")
        if self.steer_samples_per_question <= 0:
            raise ConfigError(f"em.steer_samples_per_question: must be positive, got {self.steer_samples_per_question}")
        _at_least("em", self, ("n_permutations",), 100)
        _at_least("em", self, ("n_bootstrap",), MIN_BOOTSTRAP, BOOTSTRAP_WHY)


@dataclass
class BenchConfig:
    """`bench`: psm_repro against plain HF and the machine's own limit (ratios measured in one run)."""

    repeats: int = 3
    scan_repeats: int = 5
    """The scan rounds are short (~4 s each) and the scan-vs-bare-HF ratio sat at 0.90-0.93 in earlier runs:
    more rounds for a steadier median."""
    n_texts: int = 64
    text_tokens: int = 64
    scan_batch: int = 16
    gen_batch: int = 16
    gen_tokens: int = 24
    sweep_coefficients: int = 8
    sweep_prompts: int = 4
    end_to_end: bool = True
    """Also time `run experiment=steer_secrecy` in a subprocess (wall time and peak memory)."""
    out_dir: str = "results/bench"

    def __post_init__(self):
        _positive("bench", self, ("repeats", "scan_repeats", "n_texts", "text_tokens", "scan_batch", "gen_batch",
                                  "gen_tokens", "sweep_coefficients", "sweep_prompts"))


@dataclass
class JudgeConfig:
    """The `judge`, `validate-judge` and `label-*` commands (the backend is `steer.judge`)."""

    input: str | None = None
    """JSONL of replies to score: one object per line with at least `prompt` and `reply`."""
    output: str | None = None
    """Where the scored JSONL goes (the input's objects plus trait_score, coherence_score, score)."""
    sets_dir: str = "experiments/judge_sets"
    """Labelled real replies (docs/judge_validation.md): the offline judge is fitted and validated on them."""
    personas: list[str] = field(default_factory=list)
    """`validate-judge`, `label-pool`, `label-sheets`: the personas to run (empty: every persona with labelled
    replies for validate-judge, every shipped persona for the label commands)."""
    labeller: str | None = None
    """`label-merge`: who read the replies (recorded on every label merged from `judge.input`)."""
    folds: int = 5
    """Cross-validation folds, grouped by prompt, for the validity that goes on the cards."""
    out_dir: str | None = None
    """`label-sheets`: where the blind sheets go (required). `validate-judge`: where it writes its table; None: a new runs/judge_validation/<time> directory. A directory
    that already holds a table is refused, never overwritten (`make results` regenerates results/judge_validation)."""

    def __post_init__(self):
        if self.folds < 2:
            raise ConfigError(f"judge.folds: must be >= 2, got {self.folds}")


@dataclass
class PostTrainConfig:
    """`posttrain`: make a base model a chat assistant by LoRA SFT, beside a control fine-tune on narrative text with
    the same steps and tokens, and read both through the base model's SAE (docs/posttraining.md)."""

    chats_corpus: str = "corpus/smollm2_135m"
    """A built corpus (`build-corpus`) whose chats are the SFT data and whose narratives are the control's: the
    training split only, parsed back into turns and written in the model's chat format."""
    eval_corpus: str = "corpus/gemma3_270m"
    """The model's own corpus: its held-out narrative and chat sequences measure the SAE's transfer."""
    chats: int = 480
    """SFT chats (closed assistant turns of at most `max_tokens` tokens), drawn with the seed."""
    max_tokens: int = 256
    epochs: int = 1
    lora_rank: int = 16
    lr: float = 1e-3
    batch_size: int = 8
    checkpoint_every: int = 10
    """Steps between checkpoints: a killed run resumes from the last one to the same weights."""
    ordinary: str = "experiments/ordinary/ordinary_content.yaml"
    """User turns the three models answer for the blind read (the `user` field of each item)."""
    max_new_tokens: int = 64
    heldout_sequences: int = 32
    """Held-out sequences per slice for the SAE transfer (FVU, CE loss recovered)."""
    context_size: int = 128
    diff_items: int = 160
    """Assistant turns (held-out chats first, then unused training chats) read by every model for the diff."""
    diff_top_n: int = 50
    export_dir: str | None = None
    """Where the post-trained arm's LoRA adapter is saved (peft format, relative to the project root), for a model
    config's `adapter:` (configs/model/gemma3_270m_posttrained.yaml); None: not exported."""
    posttrained_sae: str | None = None
    """An SAE of the base SAE's shape trained on the post-trained model (`train-sae
    experiment=sae_gemma3_270m_posttrained`): its latents are matched to the base SAE's (reused vs new) and the
    streetlight test runs on the two groups. None, or not there yet: the card says the stage did not run."""
    seed_sae: str | None = None
    """A second seed of the base SAE (`train-sae experiment=sae_gemma3_270m_seed1`): the same matching between
    two SAEs of one model, the ceiling SAE training noise puts on the reused share."""
    n_rotations: int = 20
    """Random rotations of the residual stream in the match threshold's null (half set it, half check it)."""
    null_quantile: float = 0.99
    """The match threshold: this quantile of a rotated latent's best cosine with the base SAE."""
    n_permutations: int = 10000
    n_bootstrap: int = 1000

    def __post_init__(self):
        if not 0.5 <= self.null_quantile < 1:
            raise ConfigError(f"posttrain.null_quantile: must be in [0.5, 1), got {self.null_quantile}")
        _at_least("posttrain", self, ("n_rotations",), 2)
        _positive("posttrain", self, ("chats", "max_tokens", "epochs", "lora_rank", "batch_size", "checkpoint_every",
                                      "max_new_tokens", "heldout_sequences", "context_size", "diff_items",
                                      "diff_top_n"))
        if self.lr <= 0:
            raise ConfigError(f"posttrain.lr: must be positive, got {self.lr}")
        if self.diff_items < 8:
            raise ConfigError(f"posttrain.diff_items: need at least 8 turns to select on one half and test on the "
                              f"other, got {self.diff_items}")
        _at_least("posttrain", self, ("n_permutations",), 100)
        _at_least("posttrain", self, ("n_bootstrap",), MIN_BOOTSTRAP, BOOTSTRAP_WHY)
