"""LLM judge against a fake OpenAI-compatible server on 127.0.0.1 (no outside network).

Each test starts its own server on an ephemeral port and shuts it down at the
end; every Judge has a short timeout and tiny backoff, so no test can hang.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from budgetlm.errors import BudgetLMError
from budgetlm.eval.judge import Judge, parse_reply

STORY = "Once upon a time, Lily found a red ball. She played with it all day. She was happy."
PROMPT = "Write a story about a girl and a ball."
KEY = "sk-test-secret-123456"
JSON_REPLY = '{"grammar": 8, "coherence": 7, "creativity": 5, "prompt_following": 9, "justification": "Simple but clean."}'


class FakeServer:
    """Replays queued (status, body-or-reply, delay) answers; records every request."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, str, float]] = []
        self.default: tuple[int, str, float] = (200, JSON_REPLY, 0.0)
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a stuck client connection cannot block shutdown for long

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, text, delay = fake.queue.pop(0) if fake.queue else fake.default
                if delay:
                    time.sleep(delay)
                if status == 200:
                    payload = {"choices": [{"message": {"role": "assistant", "content": text}}]}
                    data = json.dumps(payload).encode()
                else:
                    data = text.replace("{auth}", self.headers.get("Authorization", "")).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    try:
        yield srv
    finally:
        srv.close()
    assert not srv.thread.is_alive()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BUDGETLM_JUDGE_URL", "BUDGETLM_JUDGE_MODEL", "BUDGETLM_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def make_judge(server: FakeServer, **kw: Any) -> Judge:
    kw.setdefault("model", "judge-model")
    return Judge(base_url=server.base_url, timeout=5, backoff=0.01, **kw)


def test_happy_path_json_reply(server: FakeServer) -> None:
    res = make_judge(server).score(STORY, PROMPT)
    assert (res["grammar"], res["coherence"], res["creativity"], res["prompt_following"]) == (8, 7, 5, 9)
    assert res["justification"] == "Simple but clean."
    assert res["parse_error"] is None and res["cached"] is False
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0
    user = req["body"]["messages"][-1]["content"]
    assert STORY in user and PROMPT in user and "prompt_following" in user
    assert "Authorization" not in req["headers"]


@pytest.mark.parametrize(
    "reply",
    [
        "```json\n" + JSON_REPLY + "\n```",
        "Here is my rating:\n" + JSON_REPLY + "\nHope this helps! {not json}",
        "Grammar: 8/10\nCoherence: 7/10\nCreativity: 5/10\nPrompt following: 9/10\nSimple but clean.",
        "**Grammar** - 8\n**Coherence** - 7\n**Creativity** - 5\n**Prompt-Following** - 9",
        '{"Grammar": "8/10", "Coherence": {"score": 7}, "Creativity": 5.0, "Prompt Following": "9"}',
    ],
)
def test_fenced_and_loose_reply_formats(server: FakeServer, reply: str) -> None:
    server.default = (200, reply, 0.0)
    res = make_judge(server).score(STORY, PROMPT)
    assert (res["grammar"], res["coherence"], res["creativity"], res["prompt_following"]) == (8, 7, 5, 9)
    assert res["parse_error"] is None


def test_scores_are_clamped() -> None:
    res = parse_reply('{"grammar": 15, "coherence": 0, "creativity": -3, "prompt_following": 10}')
    assert (res["grammar"], res["coherence"], res["creativity"], res["prompt_following"]) == (10, 1, 1, 10)
    assert parse_reply("Grammar: 11/10 Coherence: 0.5")["grammar"] == 10


def test_unparseable_reply_gives_none_and_note(server: FakeServer) -> None:
    server.default = (200, "I really liked this story, it was lovely.", 0.0)
    res = make_judge(server).score(STORY, PROMPT)
    assert all(res[c] is None for c in ("grammar", "coherence", "creativity", "prompt_following"))
    assert "no parseable score" in res["parse_error"] and "grammar" in res["parse_error"]
    partial = parse_reply('{"grammar": 6, "coherence": "N/A"}', with_prompt=False)
    assert partial["grammar"] == 6 and partial["coherence"] is None
    assert partial["parse_error"] == "no parseable score for: coherence, creativity"


def test_no_prompt_means_no_prompt_following(server: FakeServer) -> None:
    server.default = (200, '{"grammar": 8, "coherence": 7, "creativity": 5}', 0.0)
    res = make_judge(server).score(STORY)
    assert res["prompt_following"] is None and res["parse_error"] is None
    assert "prompt_following" not in server.requests[0]["body"]["messages"][-1]["content"]


def test_cache_avoids_second_request(server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "judge_cache.jsonl"
    judge = make_judge(server, cache_path=cache)
    first = judge.score(STORY, PROMPT)
    assert server.hits == 1
    second = judge.score(STORY, PROMPT)
    assert server.hits == 1 and second["cached"] is True
    assert second["grammar"] == first["grammar"]
    # Persisted on disk: a fresh Judge with the same file does not hit the endpoint either.
    assert make_judge(server, cache_path=cache).score(STORY, PROMPT)["cached"] is True
    assert server.hits == 1
    # Key covers model, prompt and story.
    make_judge(server, cache_path=cache, model="other-model").score(STORY, PROMPT)
    judge.score(STORY, "A different prompt.")
    judge.score(STORY + " The end.", PROMPT)
    assert server.hits == 4
    assert len(cache.read_text().splitlines()) == 4


def test_corrupt_cache_line_is_skipped(server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    make_judge(server, cache_path=cache).score(STORY, PROMPT)
    with cache.open("a") as f:
        f.write('{"key": "trunc')
    assert make_judge(server, cache_path=cache).score(STORY, PROMPT)["cached"] is True
    assert server.hits == 1


def test_api_key_sent_as_bearer_from_argument_and_env(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    judge = make_judge(server, api_key=KEY)
    judge.score(STORY, PROMPT)
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(judge)
    monkeypatch.setenv("BUDGETLM_JUDGE_URL", server.base_url)
    monkeypatch.setenv("BUDGETLM_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("BUDGETLM_JUDGE_API_KEY", "env-key")
    Judge(timeout=5, backoff=0.01).score(STORY, PROMPT)
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer env-key"
    assert server.requests[-1]["body"]["model"] == "env-model"


def test_500_then_200_is_retried(server: FakeServer) -> None:
    server.queue = [(500, "boom", 0.0), (503, "busy", 0.0)]
    res = make_judge(server).score(STORY, PROMPT)
    assert server.hits == 3 and res["grammar"] == 8


def test_retries_are_bounded_and_error_names_url_and_status(server: FakeServer) -> None:
    server.default = (500, "boom", 0.0)
    judge = make_judge(server, api_key=KEY)
    with pytest.raises(BudgetLMError) as err:
        judge.score(STORY, PROMPT)
    assert server.hits == 3
    assert judge.url in str(err.value) and "HTTP 500" in str(err.value)


def test_client_error_not_retried_and_key_never_in_message(server: FakeServer) -> None:
    server.default = (401, '{"error": "bad key {auth}"}', 0.0)  # server echoes the header back
    with pytest.raises(BudgetLMError) as err:
        make_judge(server, api_key=KEY).score(STORY, PROMPT)
    msg = str(err.value)
    assert server.hits == 1
    assert "401" in msg and server.base_url in msg and KEY not in msg


def test_timeout_is_retried(server: FakeServer) -> None:
    server.queue = [(200, JSON_REPLY, 1.0)]
    judge = Judge(base_url=server.base_url, model="m", timeout=0.2, backoff=0.01)
    assert judge.score(STORY, PROMPT)["grammar"] == 8
    assert server.hits == 2


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = Judge(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout=2, backoff=0.01)
    with pytest.raises(BudgetLMError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed after 3 tries"):
        judge.score(STORY)


def test_missing_env_vars_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BudgetLMError, match="BUDGETLM_JUDGE_URL"):
        Judge()
    monkeypatch.setenv("BUDGETLM_JUDGE_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(BudgetLMError, match="BUDGETLM_JUDGE_MODEL"):
        Judge()
    with pytest.raises(BudgetLMError, match="http://"):
        Judge(base_url="localhost:8000/v1", model="m")


def test_score_many_means(server: FakeServer) -> None:
    server.queue = [
        (200, JSON_REPLY, 0.0),
        (200, '{"grammar": 4, "coherence": 3, "creativity": 7, "prompt_following": 5}', 0.0),
        (200, "no scores here", 0.0),
    ]
    out = make_judge(server).score_many(["s1", "s2", "s3"], [PROMPT] * 3)
    assert out["grammar"] == pytest.approx(6.0) and out["coherence"] == pytest.approx(5.0)
    assert out["creativity"] == pytest.approx(6.0) and out["prompt_following"] == pytest.approx(7.0)
    assert out["n_stories"] == 3 and out["n_parse_errors"] == 1 and len(out["results"]) == 3
    with pytest.raises(BudgetLMError, match="2 stories but 1 prompts"):
        make_judge(server).score_many(["a", "b"], ["p"])
