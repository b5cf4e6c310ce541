"""Every steering method side by side, in the style of AxBench's table: each at its own coefficient chosen on
the dev half by the headline score, reported on the test half with a BCa interval, ranked, and compared with the
SAE latent by per-prompt differences (interval and two-sided sign-flip p). The A/B metric at the same
coefficient sits beside it."""

from __future__ import annotations

import numpy as np

from psm_repro.config import SteerConfig
from psm_repro.core import stats

METHOD_COLUMNS = ["rank", "method", "coefficient", "score", "score_ci_low", "score_ci_high", "trait_score",
                  "coherence_score", "diff_vs_sae_latent", "diff_ci_low", "diff_ci_high", "p_vs_sae_latent",
                  "ab_p_matching", "ab_ci_low", "ab_ci_high", "n_prompts"]


def _prompt_means(values: np.ndarray, cols: dict, method: str, c: float, split: str) -> dict[int, float]:
    m = (cols["method"] == method) & (cols["coef"] == c) & (cols["split"] == split)
    return {int(p): float(np.nanmean(values[m & (cols["prompt"] == p)])) for p in np.unique(cols["prompt"][m])}


def chosen_coefficient(table: list[dict], method: str) -> float:
    """The method's coefficient with the best dev-half headline score (0 for the unsteered conditions)."""
    dev = [r for r in table if r["split"] == "dev" and r["method"] == method]
    return max(dev, key=lambda r: r["score"])["coefficient"]


def compare_methods(table: list[dict], measures: dict, cols: dict, steered: list[str], cfg: SteerConfig, seed: int,
                    ab: list[dict] | None = None) -> list[dict]:
    """One row per method on the test half, best first."""
    methods = list(steered) + ["system_prompt", "unsteered"]
    chosen = {m: chosen_coefficient(table, m) for m in methods}
    latent = _prompt_means(measures["score"], cols, "sae_latent", chosen["sae_latent"], "test")
    ab_at = {(r["method"], r["coefficient"]): r for r in ab or []}
    rows = []
    for m in methods:
        c = chosen[m]
        per_prompt = _prompt_means(measures["score"], cols, m, c, "test")
        mean, lo, hi = stats.bca_interval(np.array(list(per_prompt.values())), cfg.n_bootstrap, seed)
        row = {"method": m, "coefficient": c, "score": mean, "score_ci_low": lo, "score_ci_high": hi,
               "n_prompts": len(per_prompt)}
        for name in ("trait", "coherence"):
            row[f"{name}_score"] = float(np.mean(list(_prompt_means(measures[name], cols, m, c, "test").values())))
        if m == "sae_latent":
            row |= {"diff_vs_sae_latent": 0.0, "diff_ci_low": 0.0, "diff_ci_high": 0.0, "p_vs_sae_latent": 1.0}
        else:
            d = np.array([per_prompt[p] - latent[p] for p in sorted(set(per_prompt) & set(latent))])
            dm, dlo, dhi = stats.bca_interval(d, cfg.n_bootstrap, seed)
            p = stats.sign_flip_p(d, alternative="two-sided", n_resamples=2 ** min(len(d), 20), seed=seed)
            row |= {"diff_vs_sae_latent": dm, "diff_ci_low": dlo, "diff_ci_high": dhi, "p_vs_sae_latent": p}
        a = ab_at.get((m, c))
        nan = float("nan")
        row |= {"ab_p_matching": a["p_matching"] if a else nan, "ab_ci_low": a["ci_low"] if a else nan,
                "ab_ci_high": a["ci_high"] if a else nan}
        rows.append(row)
    rows.sort(key=lambda r: -r["score"])
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    return rows
