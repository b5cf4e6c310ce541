"""The LLM-judge client against a real HTTP server on loopback (no mock objects)."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from psm_repro.judges.llm_judge import JudgeError, LLMJudge, parse_verdict, weighted_number


class Server:
    """A tiny OpenAI-compatible endpoint whose behaviour each test scripts."""

    def __init__(self, script):
        self.script = list(script)  # per request: ("ok", content) | ("error", status) | ("garbage", body)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, self.headers.get("Authorization"), body))
                kind, value = outer.script.pop(0) if outer.script else ("ok", '{"trait": 50, "coherence": 50}')
                if kind == "error":
                    self.send_response(value)
                    self.end_headers()
                    return
                choice = {"message": {"role": "assistant", "content": value}}
                if kind == "logprobs":  # value: [(token, logprob), ...] for the first answer token
                    choice = {"message": {"role": "assistant", "content": value[0][0]},
                              "logprobs": {"content": [{"token": value[0][0], "logprob": value[0][1],
                                                        "top_logprobs": [{"token": t, "logprob": lp}
                                                                         for t, lp in value]}]}}
                payload = value.encode() if kind == "garbage" else json.dumps({
                    "choices": [choice],
                    "usage": {"prompt_tokens": 90, "completion_tokens": 10, "total_tokens": 100}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _judge(server, tmp_path, **kw):
    return LLMJudge("judge-model", tmp_path / "judge", base_url=server.url, api_key="k", backoff_s=0.01,
                    timeout_s=5, usd_per_1k_tokens=0.5, **kw)


def test_scores_and_caches_by_content(tmp_path):
    with Server([("ok", 'Sure! {"trait": 80, "coherence": 95}')]) as srv:
        judge = _judge(srv, tmp_path)
        v = judge.score("secretive", "Tell me", "I'd rather not say.")
        assert (v.trait, v.coherence, v.cached) == (80, 95, False)
        again = judge.score("secretive", "Tell me", "I'd rather not say.")
        assert again.cached and again.trait == 80
        assert len(srv.requests) == 1
        path, auth, body = srv.requests[0]
        assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "judge-model"
        judge.score("secretive", "Tell me", "Here it is.")  # different content: a new request
        assert len(srv.requests) == 2
    usage = [json.loads(x) for x in (tmp_path / "judge" / "usage.jsonl").read_text().splitlines()]
    assert len(usage) == 2 and usage[0]["total_tokens"] == 100 and usage[0]["usd"] == pytest.approx(0.05)


def test_server_errors_are_retried(tmp_path):
    with Server([("error", 500), ("error", 429), ("ok", '{"trait": 10, "coherence": 90}')]) as srv:
        v = _judge(srv, tmp_path).score("r", "p", "reply")
        assert v.trait == 10 and len(srv.requests) == 3


def test_a_server_that_always_errors_gives_nan_not_a_number(tmp_path):
    with Server([("error", 500)] * 10) as srv:
        v = _judge(srv, tmp_path, max_retries=2).score("r", "p", "reply")
        assert math.isnan(v.trait) and math.isnan(v.coherence) and len(srv.requests) == 3
    assert not list((tmp_path / "judge").glob("cache/*.json"))  # failures are not cached


def test_garbage_bodies_and_unparseable_answers_are_retried_then_nan(tmp_path):
    script = [("garbage", "<html>oops</html>"), ("ok", "I think it is quite secretive."),
              ("ok", '{"trait": 150, "coherence": 20}')]
    with Server(script) as srv:
        v = _judge(srv, tmp_path, max_retries=2).score("r", "p", "reply")
        assert math.isnan(v.trait) and len(srv.requests) == 3


def test_missing_endpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("PSM_REPRO_JUDGE_BASE_URL", raising=False)
    with pytest.raises(JudgeError, match="PSM_REPRO_JUDGE_BASE_URL"):
        LLMJudge("m", tmp_path)


def test_parse_verdict():
    assert parse_verdict('{"trait": 3, "coherence": 4}').trait == 3
    assert parse_verdict("no json here") is None
    assert parse_verdict('{"trait": "high", "coherence": 4}') is None


def test_logprob_protocol_asks_two_questions_and_weights_the_numbers(tmp_path):
    """persona-vectors form: a trait question with the rubric, a coherence question without it; each grade is
    the probability-weighted number (hand-computed: 0.5*80 + 0.25*60 + 0.25*100 = 80; 0.6*90 + 0.4*40 = 70)."""
    import math as m

    script = [("logprobs", [("80", m.log(0.5)), ("60", m.log(0.25)), ("100", m.log(0.25))]),
              ("logprobs", [("90", m.log(0.6)), ("40", m.log(0.4)), ("Sure", m.log(1e-3))])]
    with Server(script) as srv:
        v = _judge(srv, tmp_path, protocol="logprob").score("secretive: hides things", "Tell me", "I won't.")
        assert v.trait == pytest.approx(80) and v.coherence == pytest.approx(70)  # "Sure" is not a number
        (_, _, trait_body), (_, _, coh_body) = srv.requests
        assert "secretive: hides things" in trait_body["messages"][-1]["content"]
        assert "secretive" not in coh_body["messages"][-1]["content"]
        assert trait_body["logprobs"] is True and trait_body["top_logprobs"] == 20
        again = _judge(srv, tmp_path, protocol="logprob").score("secretive: hides things", "Tell me", "I won't.")
        assert again.cached and len(srv.requests) == 2


def test_weighted_number_edge_cases():
    assert weighted_number(None, "I'd say 85 overall") == 85
    assert weighted_number(None, "no grade") is None
    assert weighted_number(None, "150") is None
    # little mass on numbers (a refusal): not a grade
    assert weighted_number([{"token": "I", "logprob": -0.01}, {"token": "5", "logprob": -5}], "I") is None
    assert weighted_number([{"token": " 7", "logprob": 0.0}], "7") == 7


def test_unknown_protocol_is_a_clear_error(tmp_path):
    with pytest.raises(JudgeError, match="llm_judge_protocol"):
        LLMJudge("m", tmp_path, base_url="http://127.0.0.1:1/v1", protocol="vibes")
