"""`tables`: the cross-card aggregates on hand-computed cards (psm_repro/report/tables.py); the committed
results/README.md regenerating byte for byte is tests/cli/test_cli.py's."""

import pytest


def test_tables_aggregate_mean_rank_and_wins_against_the_latent():
    from psm_repro.report.tables import methods_sections

    def card(latent, vector, vector_low, ab):
        rows = [{"method": "sae_latent", "score": latent, "diff_vs_sae_latent": 0.0, "diff_ci_low": 0.0,
                 "ab_p_matching": 0.5},
                {"method": "persona_vector", "score": vector, "diff_vs_sae_latent": vector - latent,
                 "diff_ci_low": vector_low, "ab_p_matching": ab}]
        rows.sort(key=lambda r: -r["score"])
        for rank, r in enumerate(rows, start=1):
            r["rank"] = rank
        return {"model": "m", "steering": {"methods": rows}}

    lines = methods_sections([("a", card(0.3, 0.5, 0.1, 0.6)), ("b", card(0.4, 0.45, -0.1, 0.7)),
                              ("c", card(0.4, 0.2, -0.3, float("nan"))), ("d", card(0.4, 0.4, -0.2, 0.5)),
                              ("imported", card(0.1, 0.9, 0.5, 0.9) | {"finder": {"assistant_only": True}}),
                              ("other_model", card(0.9, 0.1, -0.5, 0.1) | {"model": "m2"})])
    text = "\n".join(lines)
    # persona vector: ranks 1, 1, 2, 2 -> 1.50; higher than the latent on 2 of 4 cards (a tie is no win),
    # interval above 0 on 1; A/B over the cards that have it: (0.6 + 0.7 + 0.5) / 3
    assert "| m | persona vector | 4 | 1.50 | 2/4 (1) | 0.600 |" in text
    assert "| m | SAE latent | 4 | 1.50 | - | 0.500 |" in text
    assert "| m2 | persona vector | 1 | 2.00 | 0/1 (0) | 0.100 |" in text  # another model's card is its own row
    assert "| [a](a/summary.md) | 0.300 (2) | 0.500 (1) |" in text
    assert "| [imported](imported/summary.md) | 0.100 (2) | 0.900 (1) |" in text  # listed, not aggregated


@pytest.mark.parametrize("states, signed, expected", [
    ([1, 1], True, "**replicates**"),
    ([1, 0], True, "does not replicate"),
    ([1, -1], True, "**opposite**"),
    ([0, -1], True, "holds on neither"),  # the claim is "above 0": a reversal alone is not a replication of it
    ([0, 0], True, "holds on neither"),
    ([1, None], True, "not comparable"),
    ([-1, -1], False, "**replicates**"),  # unsigned: the same sign on every model, whichever it is
    ([-1, 0], False, "does not replicate"),
    ([-1, 1], False, "**opposite**"),
    ([0, 0], False, "holds on neither"),
])
def test_the_cross_model_call_is_read_off_the_states(states, signed, expected):
    from psm_repro.report.cross_model import call

    assert call(states, signed) == expected


@pytest.mark.parametrize("lo, hi, significant, expected", [
    (0.1, 0.3, True, 1), (-0.3, -0.1, True, -1), (-0.1, 0.3, True, 0), (0.1, 0.3, False, 0),
    (float("nan"), 0.2, True, None), (0.0, 0.3, True, 0),  # an interval touching 0 does not exclude it
])
def test_a_claims_state_is_the_side_of_zero_its_interval_is_on(lo, hi, significant, expected):
    from psm_repro.report.cross_model import state

    assert state(lo, hi, significant) == expected


def test_the_cross_model_section_puts_each_persona_on_every_model_with_a_call(tmp_path):
    from psm_repro.report.cross_model import cross_model_section

    def card(model, diff, reliable, significant):
        cell = {"diff": diff, "ci_low": diff - 0.1, "ci_high": diff + 0.1, "beats": reliable and diff > 0.1,
                "verdict": ("beats" if diff > 0.1 else "no") if reliable else "judge not valid"}
        return {"model": model, "sae": f"{model}_sae", "persona": "secrecy",
                "finder": {"top_score": 1.5, "shuffled_max_score_p95": 0.4, "reuse_rate": 0.3,
                           "reuse_rate_shuffled": 0.1, "significant_shared": significant},
                "steering": {"judge_reliable": reliable, "methods": [],
                             "headline": {f"vs_{k}": cell for k in ("unsteered", "random_latent", "dense_direction",
                                                                     "system_prompt")}}}

    assert cross_model_section([("steer_secrecy", card("smollm2_135m_it", 0.3, True, 3))], [], tmp_path) == []
    text = "\n".join(cross_model_section([("steer_secrecy", card("smollm2_135m_it", 0.3, True, 3)),
                                          ("b/steer_secrecy", card("b", 0.3, True, 0))], [], tmp_path))
    assert "| persona | smollm2_135m_it | b | call |" in text  # the embedded default first
    assert "| secrecy | [1.50 vs 0.40](steer_secrecy/summary.md), 3 pass FDR; reuse 0.30 (0.10) | " \
           "[1.50 vs 0.40](b/steer_secrecy/summary.md), 0 pass FDR; reuse 0.30 (0.10) | does not replicate |" in text
    assert "| secrecy: latent - unsteered | 0.30 [0.20, 0.40] | 0.30 [0.20, 0.40] | **replicates** |" in text
    unvalidated = "\n".join(cross_model_section([("steer_secrecy", card("smollm2_135m_it", 0.3, True, 3)),
                                                 ("b/steer_secrecy", card("b", 0.3, False, 3))], [], tmp_path))
    assert "| secrecy: latent - unsteered | 0.30 [0.20, 0.40] | 0.30 [0.20, 0.40] n/v | not comparable |" in unvalidated


def test_the_em_causal_checks_of_a_model_without_a_validated_judge_read_not_validated(tmp_path):
    from psm_repro.report.cross_model import cross_model_section

    def em(model, valid):
        h = {"narrow_vs_control_broad": {"diff": 0.2, "ci_low": 0.1, "ci_high": 0.3}, "judge_valid": valid,
             "toxic_latent": 7, "toxic_rank": 3} | {f"{k}_beats_random": valid for k in
                                                   ("top_amplify", "toxic_amplify", "top_suppress", "toxic_suppress")}
        return ("x", {"experiment": "em_x", "model": model, "d_sae": 64, "headline": h, "judge_validity": {"auroc": 0.9}})

    text = "\n".join(cross_model_section([], [em("smollm2_135m_it", True), em("b", False)], tmp_path))
    assert "| em_x: top amplify beats random | yes | n/v | not comparable |" in text
    assert "| em_x: narrow - control, broad misalignment | 0.200 [0.100, 0.300] | 0.200 [0.100, 0.300] n/v |" in text
    assert "| em_x: toxic latent rank in the diff | 7: 3 of 64 | 7: 3 of 64 | - |" in text
