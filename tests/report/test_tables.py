"""`tables`: the cross-card aggregates on hand-computed cards (psm_repro/report/tables.py); the committed
results/README.md regenerating byte for byte is tests/cli/test_cli.py's."""


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


def test_the_cross_model_table_puts_each_persona_on_every_model_side_by_side():
    from psm_repro.report.tables import cross_model_section

    def card(model, auroc, n, reliable, diff):
        cell = {"diff": diff, "ci_low": diff - 0.1, "ci_high": diff + 0.1, "beats": reliable and diff > 0.1}
        if not reliable:
            cell["verdict"] = "judge not valid"
        return {"model": model, "sae": f"{model}_sae", "persona": "secrecy",
                "finder": {"top_score": 1.5, "shuffled_max_score_p95": 0.4, "reuse_rate": 0.3,
                           "reuse_rate_shuffled": 0.1},
                "steering": {"judge_reliable": reliable, "judge_validity": {"n": n, "auroc_headline": auroc},
                             "headline": {k: cell for k in ("vs_unsteered", "vs_random_latent", "vs_dense_direction",
                                                            "vs_system_prompt")}}}

    assert cross_model_section([("steer_secrecy", card("a", 0.9, 200, True, 0.3))]) == []  # one model: no table
    text = "\n".join(cross_model_section([("steer_secrecy", card("a", 0.9, 200, True, 0.3)),
                                          ("b/steer_secrecy", card("b", float("nan"), 0, False, 0.3))]))
    assert "| [secrecy](steer_secrecy/summary.md) | a / a_sae | 1.50 (0.40) | 0.30 (0.10) | 0.90 | 0.30 [0.20, 0.40] **beats**" in text
    assert "| [secrecy](b/steer_secrecy/summary.md) | b / b_sae | 1.50 (0.40) | 0.30 (0.10) | not validated | 0.30 [0.20, 0.40] judge not valid" in text
