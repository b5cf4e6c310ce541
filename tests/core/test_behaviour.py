import numpy as np
import torch

from psm_repro.core.behaviour import distinct_n, reply_logprobs, teacher_forced_rows


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
