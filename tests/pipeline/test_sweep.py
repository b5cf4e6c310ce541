"""The steering verdict: coefficient chosen on the dev half by the headline score, exact sign-flip tests on
the test half, Holm across the four comparisons, and no "beats" from a judge that failed validation."""

import numpy as np
import pytest
from scipy.stats import binomtest

from psm_repro.config import SteerConfig
from psm_repro.pipeline.sweep import CONTROLS, STEERED, _headline

COEFS = [1.0, 2.0]


def _cols_and_measures(latent_gain: dict[float, float], seed: int = 0, n_prompts: int = 32, noise: float = 0.05):
    rng = np.random.default_rng(seed)
    cells = [("unsteered", 0.0), ("system_prompt", 0.0)] + [(m, c) for m in STEERED for c in COEFS]
    method, coef, prompt = [], [], []
    for m, c in cells:
        for p in range(n_prompts):
            method.append(m), coef.append(c), prompt.append(p)
    cols = {"method": np.array(method), "coef": np.array(coef), "prompt": np.array(prompt)}
    cols["split"] = np.where(cols["prompt"] % 2 == 0, "dev", "test")
    base = rng.uniform(0.1, 0.3, n_prompts)[cols["prompt"]]  # each prompt has its own baseline
    score = base + rng.normal(0, noise, len(method))
    for c, gain in latent_gain.items():
        score[(cols["method"] == "sae_latent") & (cols["coef"] == c)] += gain
    measures = {"score": score, "trait": score, "coherence": np.ones_like(score)}
    table = [{"split": "dev", "method": "sae_latent", "coefficient": c,
              "score": score[(cols["method"] == "sae_latent") & (cols["coef"] == c) & (cols["split"] == "dev")].mean()}
             for c in COEFS]
    return table, measures, cols


def test_a_planted_effect_beats_every_control_at_the_dev_chosen_coefficient():
    table, measures, cols = _cols_and_measures({1.0: 0.05, 2.0: 0.4})
    h = _headline(table, measures, cols, SteerConfig(n_bootstrap=999), seed=0, judge_valid=True)
    assert h["coefficient"] == 2.0
    for c in CONTROLS:
        d = h[f"vs_{c}"]
        assert d["n_prompts"] == 16 and d["beats"] and d["verdict"] == "beats"
        assert d["ci_low"] > 0.3 and d["diff"] == pytest.approx(0.4, abs=0.05)
        # 16 prompts all better: the exact one-sided sign-flip p is 1/2^16; Holm multiplies the smallest by 4
        assert d["p"] == pytest.approx(2 ** -16, rel=1e-6)
    assert sorted(h[f"vs_{c}"]["p_holm"] for c in CONTROLS) == pytest.approx([4 * 2 ** -16, 4 * 2 ** -16,
                                                                               4 * 2 ** -16, 4 * 2 ** -16])


def test_a_judge_that_failed_validation_gives_no_verdict():
    table, measures, cols = _cols_and_measures({1.0: 0.4, 2.0: 0.4})
    h = _headline(table, measures, cols, SteerConfig(n_bootstrap=999), seed=0, judge_valid=False)
    assert all(h[f"vs_{c}"]["verdict"] == "judge not valid" and not h[f"vs_{c}"]["beats"] for c in CONTROLS)


def test_under_the_null_beats_is_rare():
    """No effect anywhere: over 40 simulated sweeps, "beats unsteered" at most at the nominal rate."""
    hits = 0
    for seed in range(40):
        table, measures, cols = _cols_and_measures({}, seed=seed)
        h = _headline(table, measures, cols, SteerConfig(n_bootstrap=199), seed=seed, judge_valid=True)
        hits += h["vs_unsteered"]["beats"]
    # one-sided level 0.05 (Holm only makes it stricter): 40 draws at p=0.05 give > 6 hits with prob < 0.05
    assert binomtest(hits, 40, 0.05, alternative="greater").pvalue > 0.01, hits


def test_a_harmful_latent_does_not_beat():
    table, measures, cols = _cols_and_measures({1.0: -0.2, 2.0: -0.3})
    h = _headline(table, measures, cols, SteerConfig(n_bootstrap=999), seed=0, judge_valid=True)
    assert h["coefficient"] == 1.0 and not h["vs_unsteered"]["beats"] and h["vs_unsteered"]["ci_high"] < 0
