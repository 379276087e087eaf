"""The openai backend against a local fake OpenAI-compatible server: order, concurrency bound, retries, errors."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmkit.generation.openai_client import GenerationError, OpenAIGenerator
from llmkit.generation.types import SamplingParams


class FakeServer:
    """Answers /completions and /chat/completions; can fail the first requests and counts concurrency."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, delay_s: float = 0.05):
        self.fail_first, self.fail_status, self.delay_s = fail_first, fail_status, delay_s
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    number = server.requests
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.bodies.append(body)
                done = False

                def leave():  # count the request as finished before the client can see the reply
                    nonlocal done
                    if not done:
                        done = True
                        with server.lock:
                            server.in_flight -= 1

                try:
                    time.sleep(server.delay_s)
                    if number <= server.fail_first:
                        leave()
                        self.send_response(server.fail_status)
                        self.end_headers()
                        self.wfile.write(b"busy")
                        return
                    chat = self.path.endswith("/chat/completions")
                    source = body["messages"][-1]["content"] if chat else body["prompt"]
                    choices = []
                    for i in range(body["n"]):
                        text = f"echo {source} #{i}"
                        choice = {"index": i, "finish_reason": "length" if body["max_tokens"] < 3 else "stop"}
                        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
                        if body.get("logprobs") is not None:
                            choice["logprobs"] = (
                                {"content": [{"logprob": -0.5}]} if chat else {"token_logprobs": [-0.25]}
                            )
                        choices.append(choice)
                    payload = json.dumps({"choices": choices}).encode()
                    leave()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    leave()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_order_chat_and_text_prompts_and_concurrency_bound():
    server = FakeServer(delay_s=0.05)
    with server as url:
        gen = OpenAIGenerator(url, "m", max_concurrency=4, show_progress=False)
        prompts = [f"p{i}" for i in range(12)] + [[{"role": "user", "content": "hello"}]]
        outs = gen.generate(
            prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=8, stop=["\n"], seed=3, logprobs=True)
        )
    assert [o.completions[1].text for o in outs[:12]] == [f"echo p{i} #1" for i in range(12)]
    assert outs[12].completions[0].text == "echo hello #0" and outs[12].completions[0].logprobs == [-0.5]
    assert outs[0].completions[0].logprobs == [-0.25]
    assert 1 < server.max_in_flight <= 4
    body = server.bodies[0]
    assert body["stop"] == ["\n"] and body["seed"] == 3 and body["max_tokens"] == 8 and body["n"] == 2


def test_retries_then_success_and_finish_reason():
    server = FakeServer(fail_first=2, fail_status=503)
    with server as url:
        gen = OpenAIGenerator(url, "m", max_concurrency=1, backoff_s=0.01, max_retries=3, show_progress=False)
        out = gen.generate(["x"], SamplingParams(max_new_tokens=2))
    assert server.requests == 3 and out[0].completions[0].finish_reason == "length"


def test_client_errors_fail_at_once_and_retries_run_out():
    with FakeServer(fail_first=99, fail_status=400) as url:
        gen = OpenAIGenerator(url, "m", backoff_s=0.01, show_progress=False)
        with pytest.raises(GenerationError, match="HTTP 400: busy"):
            gen.generate(["x"], SamplingParams())
    with FakeServer(fail_first=99, fail_status=503) as url:
        gen = OpenAIGenerator(url, "m", backoff_s=0.01, max_retries=2, show_progress=False)
        with pytest.raises(GenerationError, match="failed after 3 attempts: HTTP 503"):
            gen.generate(["x"], SamplingParams())


def test_timeout_is_retried_then_reported():
    with FakeServer(delay_s=1.0) as url:
        gen = OpenAIGenerator(url, "m", timeout_s=0.2, backoff_s=0.01, max_retries=1, show_progress=False)
        with pytest.raises(GenerationError, match="failed after 2 attempts"):
            gen.generate(["x"], SamplingParams())


def test_unreachable_server():
    gen = OpenAIGenerator("http://127.0.0.1:9/v1", "m", backoff_s=0.01, max_retries=1, show_progress=False)
    with pytest.raises(GenerationError, match="failed after 2 attempts: URLError"):
        gen.generate(["x"], SamplingParams())
