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
        return {"steering": {"methods": rows}}

    lines = methods_sections([("a", card(0.3, 0.5, 0.1, 0.6)), ("b", card(0.4, 0.45, -0.1, 0.7)),
                              ("c", card(0.4, 0.2, -0.3, float("nan"))), ("d", card(0.4, 0.4, -0.2, 0.5)),
                              ("imported", card(0.1, 0.9, 0.5, 0.9) | {"finder": {"assistant_only": True}})])
    text = "\n".join(lines)
    # persona vector: ranks 1, 1, 2, 2 -> 1.50; higher than the latent on 2 of 4 cards (a tie is no win),
    # interval above 0 on 1; A/B over the cards that have it: (0.6 + 0.7 + 0.5) / 3
    assert "| persona vector | 4 | 1.50 | 2/4 (1) | 0.600 |" in text
    assert "| SAE latent | 4 | 1.50 | - | 0.500 |" in text
    assert "| [a](a/summary.md) | 0.300 (2) | 0.500 (1) |" in text
    assert "| [imported](imported/summary.md) | 0.100 (2) | 0.900 (1) |" in text  # listed, not aggregated
