"""Is a judge valid? AUROC and agreement against blind reading labels on real replies.

The offline judge is fitted with labelled replies, so its validity is measured out of fold: replies are
grouped by prompt, each fold's judge is fitted on the other prompts' replies only and scores the held-out
ones. An LLM judge is not fitted, so it simply scores every labelled reply.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from psm_repro.core.embedded import DEFAULT as DEFAULT_MODEL
from psm_repro.core.personas import Persona
from psm_repro.judges.judge import FOLDS, VALID_AUROC, Encoder, Labelled, PersonaJudge, ReferenceLM, Scores, word_salad

logger = logging.getLogger(__name__)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (NaN when only one class is present, instead of an exception)."""
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores, float)
    keep = np.isfinite(scores)
    if len(np.unique(labels[keep])) < 2:
        return float("nan")
    return float(roc_auc_score(labels[keep], scores[keep]))


@dataclass
class Validity:
    """One judge's agreement with the reading labels of one persona's replies."""

    persona: str
    backend: str
    n: int
    """Labelled replies of the model under test (0: the judge is not validated on that model)."""
    n_trait: int
    n_coherent: int
    n_headline: int
    auroc_headline: float
    """Headline score vs the label `trait and coherent`: what every verdict rests on."""
    auroc_headline_sweep: float
    """The same, on the replies sampled as a steering sweep samples them (unsteered, system prompt, latent, dense
    direction, random latent), without the role-play and few-shot replies added for positives."""
    auroc_trait: float
    auroc_coherence: float
    agreement: float
    """Share of replies where `score > 0.5` matches the `trait and coherent` label."""
    unsteered_incoherent: float
    """Share of the labelled unsteered replies that the reader marked incoherent."""
    salad_score: float
    """Median headline score of word salads made of the persona's trait words (held-out judge)."""
    fluent_trait_score: float
    """Median headline score of held-out replies labelled trait and coherent."""
    model: str = "smollm2_135m_it"
    """The model whose labelled replies these numbers are measured on."""
    transfer_auroc_headline: float = float("nan")
    """Transfer: a judge fitted only on other models' labels (`transfer_from`), scored on this model's replies.
    Shown beside the model's own validity, never used for verdicts; NaN where either side has no labels."""
    transfer_from: str = ""

    @property
    def valid(self) -> bool:
        return bool(np.isfinite(self.auroc_headline) and self.auroc_headline >= VALID_AUROC)

    def as_row(self) -> dict:
        return asdict(self) | {"valid": self.valid}


SWEEP_METHODS = ("unsteered", "system_prompt", "sae_latent", "dense_direction", "random_latent")


def fit_labels(labelled: Labelled, model: str) -> Labelled:
    """The labels a judge for `model`'s replies is fitted on: that model's own when it has any (the judge then
    learns the text it will score, and a new model's labels leave every other model's judge unchanged), else
    every label there is (a judge moved from other models, whose validity on `model` is unknown)."""
    own = labelled.of(model=model)
    return labelled.subset(own) if own.any() else labelled


def _folds(prompts: list[str], k: int, seed: int) -> np.ndarray:
    uniq = sorted(set(prompts))
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[i]: j % k for j, i in enumerate(order)}
    return np.array([fold_of[p] for p in prompts])


def out_of_fold(persona: Persona, others: list[Persona], labelled: Labelled, encoder: Encoder, ref: ReferenceLM,
                seed: int, folds: int = FOLDS, model: str = DEFAULT_MODEL) -> tuple[Labelled, Scores, np.ndarray]:
    """Scores for the persona's labelled replies of `model` from judges that never saw their prompt (nor any
    model's reply to it); plus salad scores."""
    persona_rows = labelled.of(persona=persona.name)
    mine = persona_rows & labelled.of(model=model)
    own = labelled.subset(mine)
    fold = _folds(own.prompt, folds, seed)
    trait, coherence, salad = np.zeros(len(own.reply)), np.zeros(len(own.reply)), []
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        held_prompts = {own.prompt[i] for i in np.where(held)[0]}
        # another model's reply to a held-out prompt would leak the prompt into the fit
        keep = ~(persona_rows & np.array([p in held_prompts for p in labelled.prompt], dtype=bool))
        judge = PersonaJudge(persona, others, encoder, ref, seed).fit(labelled.subset(keep))
        s = judge.score([own.prompt[i] for i in np.where(held)[0]], [own.reply[i] for i in np.where(held)[0]])
        trait[held], coherence[held] = s.trait, s.coherence
        test_salad = word_salad(persona.judge.trait_examples, seed + 1000 + k, 8)
        salad += list(judge.score([own.prompt[0]] * len(test_salad), test_salad).score)
    return own, Scores(trait, coherence), np.array(salad)


def transfer(persona: Persona, others: list[Persona], labelled: Labelled, encoder: Encoder, ref: ReferenceLM,
             seed: int, model: str) -> tuple[float, str]:
    """AUROC headline on `model`'s labelled replies of a judge fitted only on the other models' labels, and which
    models those are ("" and NaN where either side has none)."""
    own = labelled.of(persona=persona.name, model=model)
    other = ~labelled.of(model=model)
    sources = sorted({labelled.model[i] for i in np.where(other & labelled.of(persona=persona.name))[0]})
    if not own.any() or not sources:
        return float("nan"), ", ".join(sources)
    judge = PersonaJudge(persona, others, encoder, ref, seed).fit(labelled.subset(other))
    mine = labelled.subset(own)
    return auroc(mine.headline, judge.score(mine.prompt, mine.reply).score), ", ".join(sources)


def validity(own: Labelled, scores: Scores, backend: str, persona: str, salad: np.ndarray | None = None,
             model: str = DEFAULT_MODEL, transferred: tuple[float, str] = (float("nan"), "")) -> Validity:
    head = own.headline
    unsteered = np.array([m == "unsteered" for m in own.method], dtype=bool) if own.method else np.zeros(0, bool)
    fluent = scores.score[head == 1]
    sweep = np.array([m in SWEEP_METHODS for m in own.method], dtype=bool) if own.method else np.zeros(len(head), bool)
    return Validity(
        persona=persona, backend=backend, n=len(own.reply), n_trait=int(own.trait.sum()),
        n_coherent=int(own.coherent.sum()), n_headline=int(head.sum()),
        auroc_headline=auroc(head, scores.score), auroc_headline_sweep=auroc(head[sweep], scores.score[sweep]),
        auroc_trait=auroc(own.trait, scores.trait),
        auroc_coherence=auroc(own.coherent, scores.coherence),
        agreement=float(np.mean((scores.score > 0.5) == (head == 1))) if len(head) else float("nan"),
        unsteered_incoherent=float(1 - own.coherent[unsteered].mean()) if unsteered.any() else float("nan"),
        salad_score=float(np.median(salad)) if salad is not None and len(salad) else float("nan"),
        fluent_trait_score=float(np.median(fluent)) if len(fluent) else float("nan"),
        model=model, transfer_auroc_headline=transferred[0], transfer_from=transferred[1])


def pooled(rows: list[tuple[Labelled, Scores]], backend: str, model: str = DEFAULT_MODEL) -> Validity:
    """All personas' out-of-fold scores against their labels, in one AUROC."""
    own = Labelled(sum((o.persona for o, _ in rows), []), sum((o.prompt for o, _ in rows), []),
                   sum((o.reply for o, _ in rows), []), np.concatenate([o.trait for o, _ in rows]),
                   np.concatenate([o.coherent for o, _ in rows]), sum((o.method for o, _ in rows), []),
                   sum((o.model for o, _ in rows), []))
    s = Scores(np.concatenate([x.trait for _, x in rows]), np.concatenate([x.coherence for _, x in rows]))
    return validity(own, s, backend, "pooled", model=model)


def llm_scores(prompts: list[str], replies: list[str], persona: Persona, judge) -> Scores:
    """An LLM judge's 0-100 trait and coherence, rescaled to 0-1."""
    verdicts = [judge.score(persona.judge.rubric, p, r) for p, r in zip(prompts, replies)]
    return Scores(np.array([v.trait / 100 for v in verdicts]), np.array([v.coherence / 100 for v in verdicts]))


COLUMNS = ["model", "persona", "backend", "n", "n_trait", "n_coherent", "n_headline", "auroc_headline", "auroc_headline_sweep",
           "auroc_trait",
           "auroc_coherence", "agreement", "unsteered_incoherent", "salad_score", "fluent_trait_score", "valid",
           "transfer_auroc_headline", "transfer_from"]


def render(rows: list[Validity]) -> str:
    """The validation table in Markdown."""
    from psm_repro.report.card import _f

    lines = ["| model | persona | judge | n | trait / coherent / both | AUROC headline | (sweep replies only) | "
             "AUROC trait | AUROC coherence | agreement | unsteered incoherent | salad vs fluent trait | valid | "
             "transfer: fitted on other models' labels |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in rows:
        moved = (f"{_f(v.transfer_auroc_headline, 2)} (from {v.transfer_from})" if v.transfer_from else "none")
        lines.append(f"| {v.model} | {v.persona} | {v.backend} | {v.n} | {v.n_trait} / {v.n_coherent} / {v.n_headline} | "
                     f"{_f(v.auroc_headline, 2)} | {_f(v.auroc_headline_sweep, 2)} | {_f(v.auroc_trait, 2)} | {_f(v.auroc_coherence, 2)} | "
                     f"{_f(v.agreement, 2)} | {_f(v.unsteered_incoherent, 2)} | {_f(v.salad_score, 2)} vs "
                     f"{_f(v.fluent_trait_score, 2)} | {'yes' if v.valid else '**no**'} | {moved} |")
    return "\n".join(lines) + "\n"


def shipped_personas() -> list[Persona]:
    from psm_repro.core.paths import PROJECT_ROOT
    from psm_repro.core.personas import resolve_persona

    return [resolve_persona(p.stem, None) for p in sorted((PROJECT_ROOT / "experiments" / "personas").glob("*.yaml"))]


def judge_for_run(persona: Persona, sets_dir, seed: int, folds: int = FOLDS, backend: str = "embedding",
                  llm_judge=None, ref_model=None, model: str = DEFAULT_MODEL):
    """The judge a run scores with, and its validity on the persona's labelled replies of `model` (the model
    being steered).

    Returns (score(prompts, replies) -> Scores, Validity). A persona or model without labelled replies gets a
    validity of NaN (n = 0), which reads "judge not validated on <model>" on the card and allows no verdict; the
    judge is fitted on `fit_labels(labelled, model)`.
    """
    from psm_repro.core.paths import project_path
    from psm_repro.judges.judge import load_labelled

    labelled = load_labelled(project_path(sets_dir))
    own = labelled.subset(labelled.of(persona=persona.name, model=model))
    if backend == "llm":
        def score(prompts, replies):
            return llm_scores(prompts, replies, persona, llm_judge)
        return score, validity(own, score(own.prompt, own.reply), "llm", persona.name, model=model)
    others = [p for p in shipped_personas() if p.name != persona.name]
    encoder, ref = Encoder(), ReferenceLM(ref_model)
    moved = transfer(persona, others, labelled, encoder, ref, seed, model)
    if len(own.reply):
        own, oof, salad = out_of_fold(persona, others, fit_labels(labelled, model), encoder, ref, seed, folds, model)
        valid = validity(own, oof, "embedding", persona.name, salad, model, moved)
    else:
        valid = validity(own, Scores(np.zeros(0), np.zeros(0)), "embedding", persona.name, model=model,
                         transferred=moved)
    judge = PersonaJudge(persona, others, encoder, ref, seed).fit(fit_labels(labelled, model))
    return judge.score, valid
