"""The judge's API key stays with its endpoint: not forwarded across a redirect to another
host/port, never written to the reply cache, never in an error. Fake servers on 127.0.0.1 only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from budgetlm.errors import BudgetLMError
from budgetlm.eval.judge import Judge

KEY = "sk-secret-for-tests-9876"
REPLY = '{"grammar": 8, "coherence": 7, "creativity": 5, "justification": "fine"}'


class Server:
    """Answers every request with `respond(handler) -> (status, headers, body)`; records requests."""

    def __init__(self, respond) -> None:  # noqa: ANN001
        self.requests: list[dict[str, Any]] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                srv.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                status, headers, body = respond(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any  # noqa: N815 (http.server naming)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def completion(content: str) -> tuple[int, dict, bytes]:
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    return 200, {"Content-Type": "application/json"}, body


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.close()


def _auth(request: dict[str, Any]) -> str | None:
    return next((v for k, v in request["headers"].items() if k.lower() == "authorization"), None)


@pytest.mark.parametrize("status", [301, 302, 303])
def test_redirect_to_another_port_does_not_receive_the_key(servers, status):
    target = Server(lambda h: completion(REPLY))
    servers.append(target)
    redirector = Server(lambda h: (status, {"Location": f"{target.url}/v1/chat/completions"}, b""))
    servers.append(redirector)
    judge = Judge(base_url=f"{redirector.url}/v1", model="m", api_key=KEY, timeout=5, backoff=0.01)
    result = judge.score("Once upon a time.")
    assert result["grammar"] == 8  # the redirect was followed
    assert _auth(redirector.requests[0]) == f"Bearer {KEY}"  # the endpoint itself gets the key
    assert target.requests and all(_auth(r) is None for r in target.requests)


def test_redirect_within_the_same_origin_keeps_the_key(servers):
    def respond(h):  # noqa: ANN001
        if h.path.startswith("/old/"):
            return 302, {"Location": "/v1/chat/completions"}, b""
        return completion(REPLY)
    srv = Server(respond)
    servers.append(srv)
    Judge(base_url=f"{srv.url}/old", model="m", api_key=KEY, timeout=5, backoff=0.01).score("A story.")
    assert [_auth(r) for r in srv.requests] == [f"Bearer {KEY}"] * 2


def test_cache_file_never_holds_the_key(servers, tmp_path):
    # An endpoint that echoes the request headers into its reply (some proxies and debug servers do).
    srv = Server(lambda h: completion(REPLY + f" echo: {h.headers.get('Authorization')}"))
    servers.append(srv)
    cache = tmp_path / "judge.jsonl"
    judge = Judge(base_url=srv.url, model="m", api_key=KEY, cache_path=cache, timeout=5, backoff=0.01)
    out = judge.score("A story.")
    assert out["grammar"] == 8 and KEY not in out["raw"]
    assert cache.is_file() and KEY not in cache.read_text()
    again = Judge(base_url=srv.url, model="m", api_key=KEY, cache_path=cache).score("A story.")
    assert again["cached"] and KEY not in again["raw"]


def test_errors_never_show_the_key(servers):
    srv = Server(lambda h: (400, {}, f"bad request from {h.headers.get('Authorization')}".encode()))
    servers.append(srv)
    judge = Judge(base_url=f"{srv.url}/v1?key={KEY}", model="m", api_key=KEY, timeout=5, backoff=0.01)
    with pytest.raises(BudgetLMError) as e:
        judge.score("A story.")
    assert "HTTP 400" in str(e.value) and KEY not in str(e.value) and KEY not in repr(judge)
