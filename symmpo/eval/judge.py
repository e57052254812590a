"""An LLM judge for the benchmarks that need one (MMHal-Bench, HallusionBench, Object HalBench's
GPT route): any OpenAI-compatible chat-completions endpoint, or offline.

    judge = Judge(url="http://localhost:8000/v1", model="gpt-4-0613")   # key: $OPENAI_API_KEY
    judge = Judge(requests_out="requests.jsonl", replies_in="replies.jsonl")   # offline

``judge.ask(requests)`` takes ``{id: messages}`` (chat messages, as the official script writes
them) and returns ``{id: reply text}``.

Online, each request is POSTed to ``{url}/chat/completions`` (``url`` may also name that endpoint
itself) with ``temperature`` 0 unless given, ``max_tokens`` when given, and the key read from the
environment variable ``api_key_env`` as a Bearer token (no header when it is unset). Connection
errors, timeouts, HTTP 429 and 5xx answers and unreadable bodies are retried ``retries`` times,
waiting ``retry_wait_s``, then twice that, and so on; any other HTTP error fails at once. With
``workers`` > 1 that many requests are in flight together. ``replies_out``, when given, receives
the replies as JSONL ``{"id", "reply"}``: the file an offline judge reads, so a score can be
recomputed without asking again.

Offline, the requests are written as JSONL lines ``{"id", "model", "messages"}`` to
``requests_out`` (for any batch tool), and the replies are read from ``replies_in`` (JSONL
``{"id", "reply"}``; ids match by their text, so ``0`` and ``"0"`` are the same request). A request
without a reply is an error naming it, so nothing is scored on a partial set.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


class JudgeError(RuntimeError):
    """The judge could not answer (unreachable endpoint, refused request, missing replies)."""


class _Transient(Exception):
    """A failure worth another try."""


class Judge:
    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        requests_out: str | None = None,
        replies_in: str | None = None,
        replies_out: str | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        retries: int = 3,
        retry_wait_s: float = 1.0,
        timeout_s: float = 120.0,
        workers: int = 1,
    ):
        if url is None and requests_out is None and replies_in is None:
            raise ValueError("a judge needs --judge_url (online) or requests/replies files")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.url, self.model = url, model
        self.api_key = os.environ.get(api_key_env, "")
        self.requests_out, self.replies_in = requests_out, replies_in
        self.replies_out = replies_out
        self.temperature, self.max_tokens = temperature, max_tokens
        self.retries, self.retry_wait_s = retries, retry_wait_s
        self.timeout_s, self.workers = timeout_s, workers

    @property
    def endpoint(self) -> str | None:
        """The chat-completions address requests are POSTed to (None offline)."""
        if self.url is None:
            return None
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def ask(self, requests: dict) -> dict:
        """{id: messages} -> {id: reply text}, in the order of ``requests``."""
        if self.requests_out:
            _write_jsonl(
                self.requests_out,
                ({"id": key, "model": self.model, "messages": m} for key, m in requests.items()),
            )
        if self.url is None:
            return self._read_replies(requests)
        keys = list(requests)
        if self.workers == 1 or len(keys) <= 1:
            texts = [self._post(requests[key]) for key in keys]
        else:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                texts = list(pool.map(lambda key: self._post(requests[key]), keys))
        replies = dict(zip(keys, texts, strict=True))
        if self.replies_out:
            _write_jsonl(self.replies_out, ({"id": k, "reply": r} for k, r in replies.items()))
        return replies

    def _read_replies(self, requests: dict) -> dict:
        if not self.replies_in:
            raise JudgeError(
                f"judge requests written to {self.requests_out}; run them through your judge "
                "and pass its replies (JSONL {id, reply}) to score"
            )
        path = pathlib.Path(self.replies_in)
        if not path.is_file():
            raise JudgeError(f"judge replies file {path} does not exist")
        replies = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                replies[str(row["id"])] = row["reply"]
            except (ValueError, KeyError, TypeError) as error:
                raise JudgeError(
                    f"{path} line {number} is not a JSON object with 'id' and 'reply': {error}"
                ) from error
        missing = [key for key in requests if str(key) not in replies]
        if missing:
            raise JudgeError(
                f"{path} has no reply for {len(missing)} request(s), first id {missing[0]!r}"
            )
        return {key: _text(replies[str(key)]) for key in requests}

    def _post(self, messages) -> str:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(data, headers)
            except _Transient as error:
                if attempt == self.retries:
                    raise JudgeError(
                        f"judge at {self.endpoint} failed after {attempt + 1} tries: {error}"
                    ) from error
                time.sleep(self.retry_wait_s * 2**attempt)
        raise AssertionError("unreachable")

    def _post_once(self, data: bytes, headers: dict) -> str:
        request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:500]
            message = f"HTTP {error.code}: {detail}"
            if error.code == 429 or error.code >= 500:
                raise _Transient(message) from error
            raise JudgeError(f"judge at {self.endpoint} refused the request: {message}") from error
        except OSError as error:  # URLError, timeouts, dropped connections
            raise _Transient(str(error)) from error
        try:
            return _text(json.loads(payload)["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise _Transient(f"unreadable reply {payload[:200]!r}") from error


def _text(content) -> str:
    """A reply's text; a null content (a refusal, say) is the empty reply."""
    return "" if content is None else str(content)


def _write_jsonl(path, rows) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
