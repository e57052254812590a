"""The LLM judge client against a local OpenAI-compatible stub server, and offline."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from symmpo.eval.judge import Judge, JudgeError


class StubServer:
    """An OpenAI-compatible chat-completions stub on 127.0.0.1 (a free port).

    Each POST is recorded (path, headers, JSON body). ``failures`` is a list of HTTP status codes
    to answer before answering normally; a normal reply's content is ``"re: "`` plus the last
    message's content."""

    def __init__(self):
        self.calls: list[dict] = []
        self.failures: list[int] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.calls.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status = stub.failures.pop(0) if stub.failures else 200
                if status != 200:
                    payload = json.dumps({"error": {"message": f"stub says {status}"}}).encode()
                elif self.path != "/v1/chat/completions":
                    status, payload = 404, b'{"error": "no such route"}'
                else:
                    content = "re: " + body["messages"][-1]["content"]
                    reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                    payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def stub():
    with StubServer() as server:
        yield server


def user(text):
    return [{"role": "user", "content": text}]


def test_online_replies_in_request_order_with_bearer_key(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    judge = Judge(url=stub.url, model="judge-model")
    replies = judge.ask({"b": user("second?"), "a": user("first?")})
    assert replies == {"b": "re: second?", "a": "re: first?"}
    assert list(replies) == ["b", "a"]
    assert len(stub.calls) == 2
    for call, text in zip(stub.calls, ["second?", "first?"], strict=True):
        assert call["path"] == "/v1/chat/completions"
        assert call["headers"]["Authorization"] == "Bearer sk-test-123"
        assert call["headers"]["Content-Type"] == "application/json"
        assert call["body"] == {"model": "judge-model", "messages": user(text), "temperature": 0.0}


def test_online_options_key_variable_and_full_endpoint(stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MY_JUDGE_KEY", "k2")
    # the endpoint itself as url, another key variable, max_tokens and temperature passed on
    judge = Judge(
        url=stub.url + "/chat/completions/",
        model="m",
        api_key_env="MY_JUDGE_KEY",
        max_tokens=512,
        temperature=0.5,
    )
    assert judge.ask({0: user("x")}) == {0: "re: x"}
    call = stub.calls[0]
    assert call["path"] == "/v1/chat/completions"
    assert call["headers"]["Authorization"] == "Bearer k2"
    assert call["body"]["max_tokens"] == 512 and call["body"]["temperature"] == 0.5
    # no key in the environment: no Authorization header at all
    Judge(url=stub.url, model="m").ask({0: user("y")})
    assert "Authorization" not in stub.calls[1]["headers"]


def test_online_retries_a_500_then_succeeds(stub):
    stub.failures = [500]
    judge = Judge(url=stub.url, model="m", retries=2, retry_wait_s=0)
    assert judge.ask({"q": user("hello")}) == {"q": "re: hello"}
    assert len(stub.calls) == 2  # the 500, then the answer
    assert stub.calls[0]["body"] == stub.calls[1]["body"]


def test_online_gives_up_after_its_retries_and_at_once_on_a_client_error(stub):
    stub.failures = [503, 500, 429]
    judge = Judge(url=stub.url, model="m", retries=2, retry_wait_s=0)
    with pytest.raises(JudgeError, match="3 tries"):
        judge.ask({"q": user("hello")})
    assert len(stub.calls) == 3
    stub.failures = [401]
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge.ask({"q": user("hello")})
    assert len(stub.calls) == 4  # a refused key is not retried


def test_online_unreachable_endpoint_is_a_judge_error():
    with StubServer() as closed:
        url = closed.url
    judge = Judge(url=url, model="m", retries=1, retry_wait_s=0, timeout_s=2)
    with pytest.raises(JudgeError, match="2 tries"):
        judge.ask({"q": user("anyone?")})


def test_online_workers_keep_order_and_replies_out_is_an_offline_replies_file(stub, tmp_path):
    requests = {i: user(f"q{i}") for i in range(12)}
    out = tmp_path / "replies.jsonl"
    replies = Judge(url=stub.url, model="m", workers=4, replies_out=str(out)).ask(requests)
    assert replies == {i: f"re: q{i}" for i in range(12)}
    assert len(stub.calls) == 12
    # the saved replies answer the same requests offline, with no server
    assert Judge(replies_in=str(out)).ask(requests) == replies


def test_offline_writes_requests_and_reads_replies(tmp_path):
    requests_out, replies_in = tmp_path / "requests.jsonl", tmp_path / "replies.jsonl"
    requests = {0: user("zero"), "one": user("één")}
    replies_in.write_text(
        json.dumps({"id": "one", "reply": "Rating: 4"})
        + "\n\n"
        # an id written as text matches the integer id 0
        + json.dumps({"id": "0", "reply": "Rating: 1"})
        + "\n",
        encoding="utf-8",
    )
    judge = Judge(model="gpt-x", requests_out=str(requests_out), replies_in=str(replies_in))
    assert judge.ask(requests) == {0: "Rating: 1", "one": "Rating: 4"}
    lines = requests_out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": 0, "model": "gpt-x", "messages": user("zero")},
        {"id": "one", "model": "gpt-x", "messages": user("één")},
    ]
    assert "één" in lines[1]  # written as UTF-8, not escaped


def test_offline_missing_reply_raises_naming_its_id(tmp_path):
    replies_in = tmp_path / "replies.jsonl"
    replies_in.write_text(json.dumps({"id": "a", "reply": "ok"}) + "\n", encoding="utf-8")
    judge = Judge(replies_in=str(replies_in))
    with pytest.raises(JudgeError, match=r"no reply for 2 request\(s\), first id 'question-7'"):
        judge.ask({"a": user("1"), "question-7": user("2"), "z": user("3")})


def test_offline_without_replies_says_what_to_do(tmp_path):
    requests_out = tmp_path / "requests.jsonl"
    with pytest.raises(JudgeError, match="run them through your judge"):
        Judge(requests_out=str(requests_out)).ask({"a": user("1")})
    assert json.loads(requests_out.read_text())["id"] == "a"
    with pytest.raises(JudgeError, match="does not exist"):
        Judge(replies_in=str(tmp_path / "absent.jsonl")).ask({"a": user("1")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n', encoding="utf-8")
    with pytest.raises(JudgeError, match="line 1"):
        Judge(replies_in=str(bad)).ask({"a": user("1")})


def test_a_judge_needs_an_endpoint_or_files():
    with pytest.raises(ValueError, match="judge_url"):
        Judge()
