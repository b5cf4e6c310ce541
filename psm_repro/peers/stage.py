"""The peer methods' part of `run` and `find`: the persona vector and the CAA vector, ready for the sweep.

For an imported persona_vectors trait file (no narratives, no written chats, no judge examples) the
extraction replies are the data: the pos / neg replies to the same question become the assistant contrast the
finder ranks on, and the judge's trait / neutral examples. The filter that keeps pairs for the vector then
scores each reply with a judge fitted on the other half of the questions (two folds), never on itself.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from psm_repro.config import RunConfig
from psm_repro.core.personas import MIN_PAIRS, PAIRS_WHY, Judge, Persona
from psm_repro.peers.vectors import Extraction, PeerVector, caa_vector, persona_vector, sample_extraction

logger = logging.getLogger(__name__)


@dataclass
class PeerStage:
    directions: dict[str, torch.Tensor] = field(default_factory=dict)
    """Built vectors by method name (persona_vector, caa_vector), at the SAE's hook."""
    info: dict = field(default_factory=dict)
    """Per method: what it was built from, or why it was not."""


def extract(model, persona: Persona, cfg: RunConfig, cache: Path) -> Extraction | None:
    """Sample the persona-vector extraction replies when the persona has instruction pairs and questions. For an
    imported trait file they also become its assistant contrast and its judge's examples."""
    peers = persona.peers
    imported = persona.source == "persona_vectors"
    if not peers or not peers.has_vector_data or not (cfg.peers.enabled or imported):
        return None
    ex = sample_extraction(model, peers, cfg.peers, cfg.seed, cache / "peer_replies")
    if imported:
        ok = [i for i, (a, b) in enumerate(zip(ex.pos, ex.neg)) if a.strip() and b.strip()]
        if len(ok) < MIN_PAIRS:
            raise ValueError(f"{persona.path}: only {len(ok)} extraction replies are non-empty on both sides; the "
                             f"assistant contrast needs at least {MIN_PAIRS} pairs ({PAIRS_WHY})")
        persona.assistant = [_chat(ex.questions[i], ex.pos[i]) for i in ok]
        persona.assistant_neutral = [_chat(ex.questions[i], ex.neg[i]) for i in ok]
        persona.judge = Judge(peers.eval_prompt, [ex.pos[i] for i in ok], [ex.neg[i] for i in ok])
    return ex


def _chat(question: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


def build(model, sae, persona: Persona, ex: Extraction | None, score, cfg: RunConfig, ref_model=None) -> PeerStage:
    """The peer vectors this persona's data allows. `score(prompts, replies) -> Scores` is the run's judge."""
    stage = PeerStage()
    peers = persona.peers
    if not cfg.peers.enabled or not peers:
        return stage
    vectors: list[PeerVector] = []
    if ex is not None:
        if persona.source == "persona_vectors":
            scores = crossfit_scores(persona, ex, cfg, ref_model)
        else:
            pos, neg = score(ex.questions, ex.pos), score(ex.questions, ex.neg)
            scores = {"pos_trait": pos.trait, "neg_trait": neg.trait, "pos_coherence": pos.coherence,
                      "neg_coherence": neg.coherence}
        vectors.append(persona_vector(model, sae, ex, peers, scores, cfg.peers))
    else:
        vectors.append(PeerVector("persona_vector", None, {"why_not": "no instruction pairs and questions (peers)"}))
    vectors.append(caa_vector(model, sae, peers.ab_train))
    for v in vectors:
        stage.info[v.name] = v.info | {"built": v.direction is not None}
        if v.direction is not None:
            stage.directions[v.name] = v.direction
        else:
            logger.warning("%s not built: %s", v.name, v.info.get("why_not"))
    stage.info["sources"] = peers.sources
    return stage


def crossfit_scores(persona: Persona, ex: Extraction, cfg: RunConfig, ref_model=None) -> dict:
    """Judge scores of an imported file's extraction replies, each from a judge fitted on the replies to the
    other half of the questions (its written examples are those replies: pos = trait, neg = neutral)."""
    from psm_repro.core.paths import project_path
    from psm_repro.judges.judge import Encoder, PersonaJudge, ReferenceLM, load_labelled
    from psm_repro.judges.validation import fit_labels, shipped_personas

    labelled = fit_labels(load_labelled(project_path(cfg.judge.sets_dir)), cfg.model.name)
    others = [p for p in shipped_personas() if p.name != persona.name]
    encoder, ref = Encoder(), ReferenceLM(ref_model)
    order = {q: i for i, q in enumerate(dict.fromkeys(ex.questions))}
    fold = np.array([order[q] % 2 for q in ex.questions])
    out = {k: np.zeros(len(ex.pos)) for k in ("pos_trait", "neg_trait", "pos_coherence", "neg_coherence")}
    for f in (0, 1):
        train = [i for i in np.where(fold != f)[0] if ex.pos[i].strip() and ex.neg[i].strip()]
        test = np.where(fold == f)[0]
        examples = Judge(persona.judge.rubric, [ex.pos[i] for i in train], [ex.neg[i] for i in train])
        judge = PersonaJudge(dataclasses.replace(persona, judge=examples), others, encoder, ref, cfg.seed).fit(labelled)
        for side, replies in (("pos", ex.pos), ("neg", ex.neg)):
            s = judge.score([ex.questions[i] for i in test], [replies[i] for i in test])
            out[f"{side}_trait"][test], out[f"{side}_coherence"][test] = s.trait, s.coherence
    return out
