"""Servers for the served-teacher tests, on 127.0.0.1 only: a small OpenAI-compatible mock (its
faults chosen per test) and the real llama.cpp server from llama-cpp-python, started on a free
port and stopped after."""

import contextlib
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NUMBERS = [str(n) for n in range(1, 30)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counting_tokenizer():
    """A word tokenizer whose words include the numbers 1..29, so the alignment probe counts."""
    from lm_helpers import word_tokenizer

    return word_tokenizer(50, rename={3 + i: w for i, w in enumerate(NUMBERS)})


class MockState:
    """What the mock does: ``delay_s`` per answer, ``fail_first`` answers with ``fail_status``
    first, the API ``key`` it wants, ``offset`` 0 (llama.cpp: entry r is the distribution after
    token r) or 1 (vLLM: of token r), ``die_after`` answers before it stops answering."""

    def __init__(self, tokenizer, **kw):
        from kdistill.teachers.server import TokenTexts

        self.tokenizer, self.texts = tokenizer, TokenTexts(tokenizer, len(tokenizer))
        self.delay_s, self.fail_first, self.fail_status, self.key = 0.0, 0, 503, None
        self.offset, self.die_after, self.requests, self.answered = 0, None, 0, 0
        self.tokenize_path = "/extras/tokenize"
        self.lock = threading.Lock()
        self.__dict__.update(kw)

    def next_token_logprobs(self, token: int) -> dict:
        """After token t the next is t + 1 with probability 0.7, t + 2 with 0.2; the rest spread."""
        v = len(self.tokenizer)
        probs = {(token + 1) % v: 0.7, (token + 2) % v: 0.2, (token + 3) % v: 0.05}
        return {self.texts.text[i]: math.log(p) for i, p in probs.items()}


def _handler(state: MockState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: dict, headers: dict | None = None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests += 1
                n = state.requests
            if state.key is not None and self.headers.get("Authorization") != f"Bearer {state.key}":
                return self._send(401, {"detail": "Invalid API key"})
            if n <= state.fail_first:
                return self._send(state.fail_status, {"detail": "busy"})
            with state.lock:
                dead = state.die_after is not None and state.answered >= state.die_after
                state.answered += not dead
            if dead:
                self.connection.close()
                return None
            time.sleep(state.delay_s)
            if self.path == state.tokenize_path:
                text = body.get("input", body.get("prompt"))
                return self._send(200, {"tokens": state.tokenizer(text, add_special_tokens=False)["input_ids"]})
            if self.path == "/v1/chat/completions":
                content = body["messages"][0]["content"]
                return self._send(200, {"choices": [{"message": {"content": f"{content} seed{body['seed']}"},
                                                     "finish_reason": "stop"}]})
            if self.path == "/v1/completions":
                return self._send(200, self._completion(body))
            return self._send(404, {"detail": "Not Found"})

        def _completion(self, body: dict) -> dict:
            ids = state.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
            gen = (ids[-1] + 1) % len(state.tokenizer)
            text = state.texts.text[gen]
            if body.get("logprobs") is None:
                return {"choices": [{"text": f"{text} seed{body['seed']}", "finish_reason": "length"}]}
            if not body.get("echo"):  # the generated token's entry: the distribution after the prompt
                shown, top = [gen], [state.next_token_logprobs(ids[-1])]
            elif state.offset == 0:  # llama.cpp without a BOS: entry r is the distribution after token r
                shown = ids + [gen]
                top = [state.next_token_logprobs(t) for t in shown]
            else:  # vLLM: entry r is the distribution of token r
                shown = ids + [gen]
                top = [None] + [state.next_token_logprobs(t) for t in shown[:-1]]
            if body.get("echo"):
                top[0] = None
            return {"choices": [{"text": text, "finish_reason": "length",
                                 "logprobs": {"tokens": [state.texts.text[t] for t in shown],
                                              "top_logprobs": top}}]}

    return Handler


@contextlib.contextmanager
def mock_server(state: MockState):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def llama_server(model_file: str, *extra: str, startup_s: float = 120.0):
    """llama-cpp-python's server on a free 127.0.0.1 port, killed on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model_file, "--host", "127.0.0.1",
           "--port", str(port), "--logits_all", "true", "--n_ctx", "2048", "--verbose", "false", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not start within {startup_s} s")
                time.sleep(0.5)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
