"""An LLM judge for the benchmarks that need one (MMHal-Bench, HallusionBench, Object HalBench's
GPT route): any OpenAI-compatible chat-completions endpoint, or offline.

    judge = Judge(url="http://localhost:8000/v1", model="gpt-4-0613")   # key: $OPENAI_API_KEY
    judge = Judge(requests_out="requests.jsonl", replies_in="replies.jsonl")   # offline

``judge.ask(requests)`` takes ``{id: messages}`` (chat messages, as the official script writes
them) and returns ``{id: reply text}``. Online, each request is POSTed to ``{url}/chat/completions``
with ``temperature`` 0 (unless given) and retried on transient errors. Offline, the requests are
written as JSONL lines ``{"id", "model", "messages"}`` to ``requests_out`` (for any batch tool),
and the replies are read from ``replies_in`` (JSONL ``{"id", "reply"}``); a request without a
reply is an error naming it, so nothing is scored on a partial set.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import urllib.error
import urllib.request


class JudgeError(RuntimeError):
    """The judge could not answer (unreachable endpoint, missing replies)."""


class Judge:
    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        requests_out: str | None = None,
        replies_in: str | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        retries: int = 3,
        timeout_s: float = 120.0,
    ):
        if url is None and requests_out is None and replies_in is None:
            raise ValueError("a judge needs --judge_url (online) or requests/replies files")
        self.url, self.model = url, model
        self.api_key = os.environ.get(api_key_env, "")
        self.requests_out, self.replies_in = requests_out, replies_in
        self.temperature, self.max_tokens = temperature, max_tokens
        self.retries, self.timeout_s = retries, timeout_s

    def ask(self, requests: dict) -> dict:
        """{id: messages} -> {id: reply text}."""
        if self.requests_out:
            with open(self.requests_out, "w", encoding="utf-8") as f:
                for key, messages in requests.items():
                    row = {"id": key, "model": self.model, "messages": messages}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if self.url is None:
            return self._read_replies(requests)
        return {key: self._post(messages) for key, messages in requests.items()}

    def _read_replies(self, requests: dict) -> dict:
        if not self.replies_in:
            raise JudgeError(
                f"judge requests written to {self.requests_out}; run them through your judge "
                "and pass its replies (JSONL {id, reply}) to score"
            )
        replies = {}
        for line in pathlib.Path(self.replies_in).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                replies[row["id"]] = row["reply"]
        missing = [key for key in requests if key not in replies]
        if missing:
            raise JudgeError(
                f"{self.replies_in} has no reply for {len(missing)} request(s), first id "
                f"{missing[0]!r}"
            )
        return {key: replies[key] for key in requests}

    def _post(self, messages) -> str:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
            },
        )
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(response.read())
                return reply["choices"][0]["message"]["content"]
            except (urllib.error.URLError, TimeoutError, KeyError) as error:
                if attempt == self.retries:
                    raise JudgeError(f"judge at {self.url} failed: {error}") from error
                time.sleep(2**attempt)
        raise AssertionError("unreachable")
