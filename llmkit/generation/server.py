"""An OpenAI-compatible HTTP endpoint over any in-process `Generator` (used for routed systems vLLM cannot serve).

`llmkit serve` hands plain and LoRA models to `vllm serve`. A system such as SafeThinker (gateway → refusal /
twin / DDGT / base) is several models and a router, so it is served here instead: `/v1/chat/completions`,
`/v1/completions`, `/v1/models` and `/health`, with the OpenAI request and reply shapes. Whatever the
generator puts in `GenerationOutput.metadata` (SafeThinker: `{"safethinker": {"route", "score"}}`) is returned
as extra top-level keys of the reply; llmkit's `openai` backend hands them back as `metadata`.

Concurrency: each HTTP request waits on a future; one worker thread drains the queue, groups the waiting
requests by sampling settings, and runs each group as one `generate` call (up to `max_batch` prompts), so 32
concurrent clients become a few batched calls instead of 32 serial ones.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llmkit.generation.types import GenerationOutput, Generator, Prompt, SamplingParams


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400 (or `status`)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sampling_from_request(body: dict[str, Any]) -> SamplingParams:
    """SamplingParams from an OpenAI request body; unsupported or invalid fields raise BadRequest."""
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by this server")
    if body.get("logprobs"):
        raise BadRequest("logprobs are not supported by this server")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 256))
    try:
        return SamplingParams(n=int(body.get("n", 1)), temperature=float(body.get("temperature", 1.0)),
                              top_p=float(body.get("top_p", 1.0)), max_new_tokens=int(max_tokens), stop=stop,
                              seed=None if body.get("seed") is None else int(body["seed"]))
    except (TypeError, ValueError) as e:
        raise BadRequest(f"invalid sampling parameter: {e}") from None


def prompt_from_request(body: dict[str, Any], chat: bool) -> Prompt:
    """The chat messages (chat) or the prompt string (completions) of a request body."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} objects with string content")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (batched prompts: send one request each)")
    return prompt


def openai_reply(output: GenerationOutput, model: str, chat: bool) -> dict[str, Any]:
    """The OpenAI reply object for one prompt's output, with the generator's metadata as extra keys."""
    choices = []
    for i, c in enumerate(output.completions):
        reason = "length" if c.finish_reason == "length" else "stop"
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": reason})
        else:
            choices.append({"index": i, "text": c.text, "finish_reason": reason})
    completion_tokens = sum(len(c.token_ids) for c in output.completions)
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": {"completion_tokens": completion_tokens}, **output.metadata}


@dataclass
class _Job:
    prompt: Prompt
    params: SamplingParams
    future: Future


def _params_key(p: SamplingParams) -> tuple:
    return (p.n, p.temperature, p.top_p, p.max_new_tokens, tuple(p.stop), p.seed)


class GeneratorServer:
    """Serve `generator` on host:port under the model name `model`; `start()` runs it in a background thread."""

    def __init__(self, generator: Generator, model: str, host: str = "127.0.0.1", port: int = 8000,
                 max_batch: int = 32, batch_wait_s: float = 0.05, request_timeout_s: float = 600.0):
        self.generator, self.model = generator, model
        self.max_batch, self.batch_wait_s, self.request_timeout_s = max_batch, batch_wait_s, request_timeout_s
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.batches: list[int] = []  # size of every generate call, for tests and logs
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients (ends in /v1)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "GeneratorServer":
        """Start the worker and the HTTP server threads; returns self."""
        self._threads = [threading.Thread(target=self._worker, daemon=True),
                         threading.Thread(target=self.httpd.serve_forever, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def serve_forever(self) -> None:
        """Run in the foreground until interrupted (Ctrl-C), then shut down cleanly."""
        threading.Thread(target=self._worker, daemon=True).start()
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting requests, finish the worker, close the socket."""
        self.jobs.put(None)
        self.httpd.shutdown()
        self.httpd.server_close()

    def submit(self, prompt: Prompt, params: SamplingParams) -> GenerationOutput:
        """Queue one prompt and wait for its output (what each HTTP request thread does)."""
        job = _Job(prompt, params, Future())
        self.jobs.put(job)
        return job.future.result(timeout=self.request_timeout_s)

    def _worker(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            pending, deadline = [first], time.monotonic() + self.batch_wait_s
            while len(pending) < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self.jobs.put(None)
                    break
                pending.append(job)
            groups: dict[tuple, list[_Job]] = {}
            for job in pending:
                groups.setdefault(_params_key(job.params), []).append(job)
            for group in groups.values():
                self.batches.append(len(group))
                try:
                    outputs = self.generator.generate([j.prompt for j in group], group[0].params)
                except Exception as e:  # noqa: BLE001 - the error goes back to every waiting client
                    for j in group:
                        j.future.set_exception(e)
                    continue
                for j, out in zip(group, outputs):
                    j.future.set_result(out)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet: one line per request is noise under load
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                kind = "invalid_request_error" if status < 500 else "server_error"
                self._send(status, {"error": {"message": message, "type": kind, "code": status}})

            def do_GET(self):  # noqa: N802 - http.server's naming
                path = self.path.rstrip("/")
                if path in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                elif path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "llmkit"}]})
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self):  # noqa: N802
                path = self.path.rstrip("/")
                if path not in ("/v1/chat/completions", "/v1/completions"):
                    self._error(404, f"no route {self.path}")
                    return
                chat = path.endswith("chat/completions")
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    try:
                        body = json.loads(self.rfile.read(length) or b"null")
                    except json.JSONDecodeError as e:
                        raise BadRequest(f"the request body is not JSON: {e}") from None
                    if not isinstance(body, dict):
                        raise BadRequest("the request body must be a JSON object")
                    if body.get("model") not in (None, server.model):
                        raise BadRequest(f"model {body.get('model')!r} is not served here (served: {server.model!r})", 404)
                    prompt, params = prompt_from_request(body, chat), sampling_from_request(body)
                except BadRequest as e:
                    self._error(e.status, str(e))
                    return
                try:
                    output = server.submit(prompt, params)
                except Exception as e:  # noqa: BLE001
                    self._error(500, f"{type(e).__name__}: {e}")
                    return
                self._send(200, openai_reply(output, server.model, chat))

        return Handler
