"""LLM-as-judge for generated stories, over any OpenAI-compatible endpoint.

Why: the cheap metrics in ``budgetlm.eval.story_metrics`` catch mechanical
failures (loops, "One One", truncation) but not whether a story makes sense.
A stronger model reading the story fills that gap. The judge is pluggable: it
only needs ``POST {base_url}/chat/completions`` (OpenAI, vLLM, llama.cpp
server, Ollama's /v1, ...), so nothing here depends on one vendor's SDK.

Configuration (arguments win over environment):

* ``BUDGETLM_JUDGE_URL``   base URL, e.g. ``http://localhost:8000/v1``
* ``BUDGETLM_JUDGE_MODEL`` model name sent in the request
* ``BUDGETLM_JUDGE_API_KEY`` optional; sent as ``Authorization: Bearer ...``.
  The key is never logged, never put in an error message, and never shown
  by ``repr(judge)``.

Each story is scored 1-10 on ``grammar``, ``coherence``, ``creativity`` and
``prompt_following`` (the latter only when a prompt is given; otherwise it is
None and not counted as a parse error), with a short justification. The
judge is asked for JSON, but replies are parsed leniently (see
:func:`parse_reply`) because judge models often wrap or annotate their JSON.

Replies are cached in an optional JSONL file keyed by sha256 of (model,
rubric version, prompt, story). The *raw reply* is cached, not the parsed
scores, so parser improvements apply to old cache entries; bump
``RUBRIC_VERSION`` whenever the rubric text changes so stale scores are not
reused.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from budgetlm.errors import BudgetLMError

log = logging.getLogger(__name__)

RUBRIC_VERSION = "v1"
CRITERIA = ("grammar", "coherence", "creativity", "prompt_following")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

SYSTEM_PROMPT = (
    "You are a strict, consistent judge of short stories written for young children "
    "by a small language model. Judge only the story text you are given."
)
_RUBRIC = """Rate the story on each criterion from 1 (very poor) to 10 (excellent):
- grammar: spelling, punctuation, grammatical sentences; no doubled words or stray punctuation.
- coherence: the story makes sense, stays on topic, characters stay consistent, no loops, has an ending.
- creativity: an interesting, varied plot and wording rather than stock phrases repeated.
{prompt_line}
Reply with only a JSON object, no other text, exactly like:
{example}"""

_LABELS = {
    "grammar": r"grammar",
    "coherence": r"coherence",
    "creativity": r"creativity",
    "prompt_following": r"prompt[\s_-]*following",
}


def build_messages(story: str, prompt: str = "") -> list[dict[str, str]]:
    """The chat messages sent to the judge (exposed so the rubric can be inspected)."""
    fields = [c for c in CRITERIA if prompt or c != "prompt_following"]
    example = "{" + ", ".join(f'"{c}": 7' for c in fields) + ', "justification": "one or two sentences"}'
    prompt_line = (
        "- prompt_following: the story follows the prompt it was asked to continue or fulfil."
        if prompt
        else ""
    )
    rubric = _RUBRIC.format(prompt_line=prompt_line, example=example)
    user = (f"PROMPT:\n{prompt}\n\n" if prompt else "") + f"STORY:\n{story}\n\n{rubric}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _to_score(value: Any) -> float | None:
    """Number, "7", "7/10" or {"score": 7} -> float clamped to 1..10; else None."""
    if isinstance(value, dict):
        value = value.get("score", value.get("rating"))
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        num = float(value)
    else:
        m = re.search(r"-?\d+(?:\.\d+)?", str(value))
        if not m:
            return None
        num = float(m.group())
    if num != num:  # NaN
        return None
    return min(10.0, max(1.0, num))


def _find_json_object(text: str) -> dict[str, Any] | None:
    """First JSON object in text: handles ```json fences and text around the object."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _norm_key(key: str) -> str:
    return re.sub(r"[\s-]+", "_", key.strip().lower())


def parse_reply(text: str, with_prompt: bool = True) -> dict[str, Any]:
    """Scores from a judge reply; never raises.

    Tries, per criterion: a JSON object anywhere in the reply (fenced or not,
    keys matched case-insensitively with spaces/hyphens as underscores), then
    loose "Grammar: 7/10" / "**Coherence** - 8" text. Scores are clamped to
    1..10. A criterion with no parseable score is None and listed in
    ``parse_error``; ``parse_error`` is None when everything parsed.
    """
    wanted = [c for c in CRITERIA if with_prompt or c != "prompt_following"]
    obj = _find_json_object(text) or {}
    obj = {_norm_key(str(k)): v for k, v in obj.items()}
    result: dict[str, Any] = {c: None for c in CRITERIA}
    for c in wanted:
        score = _to_score(obj.get(c))
        if score is None:
            pat = rf"\b{_LABELS[c]}\b[\s\"'*:=\-–]*(-?\d+(?:\.\d+)?)"
            m = re.search(pat, text, flags=re.IGNORECASE)
            score = _to_score(m.group(1)) if m else None
        result[c] = score
    just = next((obj[k] for k in ("justification", "reason", "explanation", "comment") if k in obj), None)
    result["justification"] = str(just) if just is not None else text.strip()[:500]
    missing = [c for c in wanted if result[c] is None]
    result["parse_error"] = f"no parseable score for: {', '.join(missing)}" if missing else None
    return result


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


class _SameOriginAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but sends the Authorization header only to the origin it was meant for:
    urllib copies every header to the new URL, which would hand the API key to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            for name in [k for k in new.headers if k.lower() == "authorization"]:
                del new.headers[name]
            new.unredirected_hdrs.pop("Authorization", None)
        return new


_OPENER = urllib.request.build_opener(_SameOriginAuthRedirect)


class Judge:
    """Scores stories with an LLM behind an OpenAI-compatible chat endpoint.

    ``score`` returns the :func:`parse_reply` dict plus ``raw`` (the reply text)
    and ``cached`` (whether the endpoint was skipped). Network use is bounded:
    at most ``max_tries`` requests per uncached story, each with ``timeout``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        cache_path: str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
        max_tries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        base_url = base_url or os.environ.get("BUDGETLM_JUDGE_URL")
        model = model or os.environ.get("BUDGETLM_JUDGE_MODEL")
        if not base_url:
            raise BudgetLMError("judge: no endpoint; pass base_url or set BUDGETLM_JUDGE_URL (e.g. http://localhost:8000/v1)")
        if not model:
            raise BudgetLMError("judge: no model; pass model or set BUDGETLM_JUDGE_MODEL")
        if not base_url.startswith(("http://", "https://")):
            raise BudgetLMError(f"judge: base URL {base_url!r} must start with http:// or https://")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key if api_key is not None else os.environ.get("BUDGETLM_JUDGE_API_KEY") or None
        self.timeout = timeout
        self.max_tries = max(1, max_tries)
        self.backoff = backoff
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, str] = self._load_cache()

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"Judge(url={self._redact(self.url)!r}, model={self.model!r}, api_key={key}, cache={str(self.cache_path)!r})"

    def cache_key(self, story: str, prompt: str = "") -> str:
        payload = json.dumps([self.model, RUBRIC_VERSION, prompt, story], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _load_cache(self) -> dict[str, str]:
        cache: dict[str, str] = {}
        if self.cache_path is None or not self.cache_path.exists():
            return cache
        with self.cache_path.open(encoding="utf-8") as f:
            for line in f:
                try:  # a line cut short by a crash is skipped, not fatal
                    rec = json.loads(line)
                    cache[rec["key"]] = self._redact(rec["reply"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        return cache

    def _store(self, key: str, reply: str) -> None:
        reply = self._redact(reply)  # an endpoint echoing the request must not put the key on disk
        self._cache[key] = reply
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"key": key, "model": self.model, "rubric": RUBRIC_VERSION, "reply": reply}
        with self.cache_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _post(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = ""
        for attempt in range(self.max_tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            log.debug("judge POST %s model=%s attempt %d", self._redact(self.url), self.model, attempt + 1)
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with _OPENER.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                detail = self._redact(e.read(300).decode("utf-8", "replace")).strip()
                last = f"HTTP {e.code}" + (f": {detail}" if detail else "")
                if e.code in _RETRY_STATUS:
                    continue
                raise BudgetLMError(f"judge endpoint {self._redact(self.url)} returned {last}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                last = f"connection error: {self._redact(str(reason))}"
                continue
            try:
                return json.loads(raw)["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                snippet = self._redact(raw[:200].decode("utf-8", "replace"))
                raise BudgetLMError(f"judge endpoint {self._redact(self.url)} sent an unexpected response: "
                                    f"{snippet!r}") from None
        raise BudgetLMError(f"judge endpoint {self._redact(self.url)} failed after {self.max_tries} tries; last: {last}")

    def score(self, story: str, prompt: str = "") -> dict[str, Any]:
        """Scores for one story (from cache when this exact request was judged before)."""
        key = self.cache_key(story, prompt)
        cached = key in self._cache
        if not cached:
            self._store(key, self._post(build_messages(story, prompt)))
        reply = self._cache[key]
        result = parse_reply(reply, with_prompt=bool(prompt))
        result.update(raw=reply, cached=cached)
        return result

    def score_many(self, stories: list[str], prompts: list[str] | None = None) -> dict[str, Any]:
        """Mean score per criterion (None when no story got that score).

        Also ``n_stories``, ``n_parse_errors`` and the per-story ``results``.
        Means skip None scores, so check ``n_parse_errors`` before trusting them.
        """
        if prompts is None:
            prompts = [""] * len(stories)
        if len(prompts) != len(stories):
            raise BudgetLMError(f"judge: {len(stories)} stories but {len(prompts)} prompts")
        results = [self.score(s, p) for s, p in zip(stories, prompts)]
        out: dict[str, Any] = {}
        for c in CRITERIA:
            vals = [r[c] for r in results if r[c] is not None]
            out[c] = sum(vals) / len(vals) if vals else None
        out["n_stories"] = len(results)
        out["n_parse_errors"] = sum(r["parse_error"] is not None for r in results)
        out["results"] = results
        return out
