import numpy as np
import torch

from psm_repro.behaviour import EmbeddingJudge, distinct_n, reply_logprobs, teacher_forced_rows


def test_judge_separates_clear_examples_and_reports_held_out_auroc():
    trait = [f"I won't tell you what I really think about the {t}; that stays with me." for t in
             ("movie", "plan", "dinner", "book", "song", "trip", "gift", "job", "party", "house")]
    neutral = [f"Here is what I think about the {t}: it was good and I enjoyed it." for t in
               ("movie", "plan", "dinner", "book", "song", "trip", "gift", "job", "party", "house")]
    judge = EmbeddingJudge.fit(trait, neutral, seed=0)
    assert judge.auroc > 0.9 and judge.reliable
    scores = judge.score(["I'd rather keep my real opinion of the car to myself.", "The car is great, I like it."])
    assert scores[0] > scores[1]


def test_judge_on_indistinguishable_examples_is_flagged():
    texts = [f"This is sentence number {i} about the weather." for i in range(20)]
    judge = EmbeddingJudge.fit(texts[::2], texts[1::2], seed=0)
    assert not judge.reliable


def test_reply_logprobs_match_a_hand_computed_teacher_forced_pass(tiny_model):
    rows, starts = teacher_forced_rows(tiny_model, ["the secret ?", "a longer question about the river ?"],
                                       ["she kept it", "no"])
    got = reply_logprobs(tiny_model, rows, starts, batch_size=2)
    for row, start, value in zip(rows, starts, got):
        ids = torch.tensor([row])
        with torch.inference_mode():
            logp = torch.log_softmax(tiny_model.model(input_ids=ids).logits[0].float(), -1)
        want = np.mean([logp[t - 1, row[t]].item() for t in range(start, len(row))])
        assert abs(value - want) < 1e-4


def test_distinct_n_detects_repetition():
    assert distinct_n([1, 2, 3, 4]) == 1.0
    assert distinct_n([1, 2, 1, 2, 1, 2]) < 0.5
