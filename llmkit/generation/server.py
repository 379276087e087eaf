"""An OpenAI-compatible HTTP endpoint over any in-process `Generator` (used for routed systems vLLM cannot serve).

`llmkit serve` hands plain and LoRA models to `vllm serve`. A system such as SafeThinker (gateway → refusal /
twin / DDGT / base) is several models and a router, so it is served here instead: `/v1/chat/completions`,
`/v1/completions`, `/v1/models` and `/health`, with the OpenAI request and reply shapes. Whatever the
generator puts in `GenerationOutput.metadata` (SafeThinker: `{"safethinker": {"route", "score"}}`) is returned
as extra top-level keys of the reply; llmkit's `openai` backend hands them back as `metadata`.

Limits (`ServerLimits`; each is an option of `llmkit serve --safety`): the body size (413), prompt tokens, `n`
and `max_tokens` (400 naming the limit), waiting requests (503 + Retry-After when full), open connections
(503) and how long a client may take to send its request (408). Every malformed request gets a 4xx with an
OpenAI error object; none is answered by a closed connection or a 500.

Scheduling: each request is a job with an estimated amount of work (tokens to generate × samples, plus a
fraction of the prompt). Two lanes (threads) take batches of waiting jobs that share sampling settings, so
concurrent clients become a few batched `generate` calls. The short lane runs only jobs of at most
`long_request_tokens` work; the other lane runs the oldest long job first and short work when no long job
waits. A long request therefore delays other long requests, never the short ones. A `generate` call cannot
be interrupted: a request whose client has gone is dropped while it waits, and its output discarded (not
sent) when it is already running.
"""

from __future__ import annotations

import json
import re
import select
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from llmkit.errors import ConfigError
from llmkit.generation.types import GenerationOutput, Generator, Prompt, SamplingParams

DEFAULT_MAX_TOKENS = 256  # when a request names no max_tokens (capped by the server's limit)
ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS, MAX_STOP_CHARS = 16, 256  # stop strings are matched at every decoding step: keep them few
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; the generators add a batch or prompt index to the seed
# Measured on SmolLM2-135M (CPU): one forward pass over 64–2048 prompt tokens costs as much as 1/40–1/300 of
# that many decoding steps. Counting a prompt token as 1/16 of a generated one errs on the long side.
PROMPT_TOKENS_PER_STEP = 16
POLL_S = 0.25  # how often a waiting request checks whether its client is still connected


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for and how much may wait; each is an option of `llmkit serve --safety`."""

    max_body_bytes: int = 1 << 20  # 1 MiB: a longer body gets 413 before it is read
    max_prompt_tokens: int = 4096  # after the chat template
    max_completion_tokens: int = 1024  # the largest max_tokens a request may name
    max_n: int = 16
    max_queue: int = 256  # requests waiting for a lane; one more gets 503 + Retry-After
    max_connections: int = 512  # open connections (each holds a thread); one more gets 503
    long_request_tokens: int = 128  # requests of more work than this never delay shorter ones
    read_timeout_s: float = 30.0  # a client must send its request (and keep-alive idles end) within this
    request_timeout_s: float = 600.0  # waiting + generating; then 504
    retry_after_s: int = 1  # the Retry-After of a 503

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"server limit {f.name} must be a positive number, got {value!r}")


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400 (or `status`: 404, 408, 411, 413, 503, ...)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class RequestTimeout(Exception):
    """The request waited and ran longer than `request_timeout_s`."""


class ClientGone(Exception):
    """The client closed its connection while its request waited or ran."""


# ---------------------------------------------------------------------------------------------------------
# request validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not the number 1


def _int_field(
    body: dict, key: str, default: int, low: int, high: int, limit: str | None = None, label: str | None = None
) -> int:
    """body[key] as an integer in [low, high]; above `high` the message names the server limit `limit`."""
    value, label = body.get(key), label or key
    if value is None:
        return default
    if not _is_int(value):
        raise BadRequest(f"{label} must be an integer, got {value!r:.40}")
    if value < low:
        raise BadRequest(f"{label} must be >= {low}, got {value}")
    if value > high:
        where = f"this server's limit {limit}" if limit else "the largest allowed"
        raise BadRequest(f"{label} is {value}, above {where} ({high})")
    return value


def _number_field(body: dict, key: str, default: float, ok: Callable[[float], bool], rule: str) -> float:
    """body[key] as a finite number satisfying `ok` (described by `rule`)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise BadRequest(f"{key} must be a finite number, got {value!r:.40}")
    if not ok(float(value)):
        raise BadRequest(f"{key} must be {rule}, got {value}")
    return float(value)


def _stop_strings(body: dict) -> list[str]:
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a non-empty string or a list of non-empty strings")
    if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise BadRequest(f"stop allows at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters")
    return [_check_text(s, "stop") for s in stop]


def sampling_from_request(body: dict[str, Any], limits: ServerLimits | None = None) -> SamplingParams:
    """SamplingParams from an OpenAI request body; unsupported, invalid or over-limit fields raise BadRequest."""
    limits = limits or ServerLimits()
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by this server")
    if body.get("logprobs"):
        raise BadRequest("logprobs are not supported by this server")
    key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = _int_field(
        body,
        key,
        min(DEFAULT_MAX_TOKENS, limits.max_completion_tokens),
        1,
        limits.max_completion_tokens,
        "max_completion_tokens",
        f"{key} (max_new_tokens)",
    )
    n = _int_field(body, "n", 1, 1, limits.max_n, "max_n")
    temperature = _number_field(body, "temperature", 1.0, lambda v: 0 <= v <= 2, "in [0, 2]")
    top_p = _number_field(body, "top_p", 1.0, lambda v: 0 < v <= 1, "in (0, 1]")
    seed = body.get("seed")
    if seed is not None:
        seed = _int_field(body, "seed", 0, 0, MAX_SEED)
    try:
        return SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_tokens, stop=_stop_strings(body), seed=seed
        )
    except (TypeError, ValueError) as e:  # belt and braces: SamplingParams checks its own ranges too
        raise BadRequest(f"invalid sampling parameter: {e}") from None


def _check_text(text: str, where: str) -> str:
    """`text` if it can be encoded (JSON's \\ud800 escapes give lone surrogates no tokenizer accepts)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"{where} is not valid Unicode (a lone surrogate at character {e.start})") from None
    return text


def _message_content(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts joined."""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise BadRequest(f"{where} must be a string (or a list of text parts)")
    return _check_text(content, where)


def prompt_from_request(body: dict[str, Any], chat: bool) -> Prompt:
    """The chat messages (chat) or the prompt string (completions) of a request body."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list of {role, content} objects with string content")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise BadRequest(f"messages[{i}] must be a {{role, content}} object")
            if not isinstance(m.get("role"), str) or m["role"] not in ROLES:
                raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r:.40}")
            out.append({"role": m["role"], "content": _message_content(m.get("content"), f"messages[{i}].content")})
        if not any(m["role"] == "user" for m in out):  # the router scores the last user message
            raise BadRequest("messages need at least one message with role 'user'")
        return out
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (batched prompts: send one request each)")
    if not prompt:
        raise BadRequest("prompt must not be empty")
    return _check_text(prompt, "prompt")


def count_prompt_tokens(prompt: Prompt, tokenizer=None) -> int:
    """Tokens the model sees for `prompt` (chat template applied).

    Without a tokenizer: the UTF-8 bytes of the text, an upper bound for byte-level BPE vocabularies.
    """
    if tokenizer is None:
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return len(text.encode("utf-8"))
    from llmkit.generation.hf import render_prompt

    try:
        text = render_prompt(tokenizer, prompt)
    except Exception as e:  # noqa: BLE001 - templates raise TemplateError, ValueError, ...: all about the messages
        raise BadRequest(f"the chat template rejects these messages: {e}") from None
    # the same call as HFGenerator: other arguments would make the fast tokenizer mutate shared state
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def openai_reply(output: GenerationOutput, model: str, chat: bool, prompt_tokens: int | None = None) -> dict[str, Any]:
    """The OpenAI reply object for one prompt's output, with the generator's metadata as extra keys."""
    choices = []
    for i, c in enumerate(output.completions):
        reason = "length" if c.finish_reason == "length" else "stop"
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": reason})
        else:
            choices.append({"index": i, "text": c.text, "finish_reason": reason})
    usage = {"completion_tokens": sum(len(c.token_ids) for c in output.completions)}
    if prompt_tokens is not None:
        usage.update(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens + usage["completion_tokens"])
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
        **output.metadata,
    }


# ---------------------------------------------------------------------------------------------------------
# scheduling


def request_work(params: SamplingParams, prompt_tokens: int) -> int:
    """A request's estimated cost in decoding steps: samples × (max_new_tokens + prompt_tokens / 16)."""
    samples = 1 if params.greedy else params.n  # greedy samples are decoded once and copied
    return samples * (params.max_new_tokens + prompt_tokens // PROMPT_TOKENS_PER_STEP)


def _params_key(p: SamplingParams) -> tuple:
    return (p.n, p.temperature, p.top_p, p.max_new_tokens, tuple(p.stop), p.seed)


@dataclass(eq=False)  # identity equality: two identical requests are still two jobs
class _Job:
    prompt: Prompt
    params: SamplingParams
    long: bool
    future: Future = field(default_factory=Future)

    @property
    def group(self) -> tuple:
        """Jobs of one group may share a generate call (same sampling settings, same lane)."""
        return (_params_key(self.params), self.long)


class _Scheduler:
    """Jobs waiting for a lane, oldest first; `next_batch` hands a lane the jobs it may run together."""

    def __init__(self, max_waiting: int, max_batch: int, batch_wait_s: float):
        self.max_waiting, self.max_batch, self.batch_wait_s = max_waiting, max_batch, batch_wait_s
        self._cond = threading.Condition()
        self._waiting: list[_Job] = []
        self._claimed: set[tuple] = set()  # groups a lane is gathering: the other lane leaves them alone
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting)

    def put(self, job: _Job) -> None:
        """Queue `job`; BadRequest(503) when the server is closing or `max_waiting` jobs already wait."""
        with self._cond:
            if self._closed:
                raise BadRequest("the server is shutting down", 503)
            if len(self._waiting) >= self.max_waiting:
                raise BadRequest(
                    f"{len(self._waiting)} requests are waiting, this server's limit max_queue; retry later", 503
                )
            self._waiting.append(job)
            self._cond.notify_all()

    def discard(self, job: _Job) -> bool:
        """Take `job` out of the queue; False when a lane already took it."""
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                return True
            return False

    def close(self) -> list[_Job]:
        """Stop handing out work; returns the jobs that were still waiting."""
        with self._cond:
            self._closed, left, self._waiting = True, self._waiting, []
            self._cond.notify_all()
            return left

    def next_batch(self, long_lane: bool) -> list[_Job] | None:
        """Block until the lane has work: up to `max_batch` jobs of one group (None once closed).

        After picking the oldest eligible job, waits up to `batch_wait_s` for more of its group to arrive.
        """
        with self._cond:
            first = self._wait_for_first(long_lane)
            if first is None:
                return None
            group = first.group
            self._claimed.add(group)
            try:
                self._gather(group)
                batch = [j for j in self._waiting if j.group == group][: self.max_batch]
                for j in batch:
                    self._waiting.remove(j)
            finally:
                self._claimed.discard(group)
                self._cond.notify_all()
            return batch

    def _wait_for_first(self, long_lane: bool) -> _Job | None:
        while not self._closed:
            free = [j for j in self._waiting if j.group not in self._claimed]
            pick = next((j for j in free if j.long), None) if long_lane else None
            pick = pick or next((j for j in free if not j.long), None)
            if pick is not None:
                return pick
            self._cond.wait()
        return None

    def _gather(self, group: tuple) -> None:
        deadline = time.monotonic() + self.batch_wait_s
        while not self._closed and sum(j.group == group for j in self._waiting) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)


# ---------------------------------------------------------------------------------------------------------
# the server


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bounded number of connection threads and no tracebacks for clients that left."""

    daemon_threads = True
    request_queue_size = 256  # the listen backlog: socketserver's 5 drops connections when 100 clients connect at once

    def __init__(self, address, handler, max_connections: int, retry_after_s: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections, self.retry_after_s = max_connections, retry_after_s
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        """Serve the connection in a thread, or answer 503 at once when `max_connections` are open."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        """The connection's thread; frees its slot when the connection ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request) -> None:
        message = f"{self.max_connections} connections are open, this server's limit max_connections; retry later"
        data = json.dumps({"error": {"message": message, "type": "server_error", "code": 503}}).encode()
        head = (
            f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Retry-After: {self.retry_after_s}\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(1.0)  # this runs in the accept loop: never wait long on one client
            request.sendall(head.encode() + data)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        """Quiet for a client that disconnected or stalled; the usual traceback for anything else."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _find_tokenizer(generator: Generator):
    """The generator's tokenizer, or for a routed system (SafeThinker) the first route's; None when neither has one."""
    routes = getattr(generator, "routes", None)
    candidates = [generator, *(routes.values() if isinstance(routes, dict) else [])]
    return next((g.tokenizer for g in candidates if getattr(g, "tokenizer", None) is not None), None)


class GeneratorServer:
    """Serve `generator` on host:port under the model name `model`; `start()` runs it in background threads.

    `tokenizer` counts prompt tokens for `max_prompt_tokens` (default: the generator's `tokenizer`, or its
    first route's; without one, UTF-8 bytes stand in for tokens).
    """

    def __init__(
        self,
        generator: Generator,
        model: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_batch: int = 32,
        batch_wait_s: float = 0.05,
        limits: ServerLimits | None = None,
        tokenizer=None,
    ):
        self.generator, self.model = generator, model
        self.limits = limits or ServerLimits()
        self.tokenizer = tokenizer if tokenizer is not None else _find_tokenizer(generator)
        self.scheduler = _Scheduler(self.limits.max_queue, max_batch, batch_wait_s)
        self.batches: list[int] = []  # size of every generate call, for tests and logs
        self.stats: Counter[str] = Counter()  # cancelled (dropped while waiting), abandoned (ran, not sent), ...
        self._stats_lock = threading.Lock()
        self.httpd = _HTTPServer(
            (host, port), self._handler_class(), self.limits.max_connections, self.limits.retry_after_s
        )
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients (ends in /v1)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "GeneratorServer":
        """Start the two lanes and the HTTP server in background threads; returns self."""
        self._start_lanes()
        # a short poll interval: stop() waits up to one interval for the accept loop to notice
        http = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        http.start()
        self._threads.append(http)
        return self

    def serve_forever(self) -> None:
        """Run in the foreground until interrupted (Ctrl-C), then shut down cleanly."""
        self._start_lanes()
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting requests, answer the waiting ones 503, close the socket."""
        for job in self.scheduler.close():
            if job.future.set_running_or_notify_cancel():  # skip jobs whose client has just gone
                job.future.set_exception(BadRequest("the server is shutting down", 503))
        self.httpd.shutdown()
        self.httpd.server_close()

    def _start_lanes(self) -> None:
        for long_lane in (False, True):
            t = threading.Thread(
                target=self._lane,
                args=(long_lane,),
                daemon=True,
                name=f"llmkit-serve-{'long' if long_lane else 'short'}-lane",
            )
            t.start()
            self._threads.append(t)

    def count(self, key: str) -> None:
        """Add one to `stats[key]` (thread-safe)."""
        with self._stats_lock:
            self.stats[key] += 1

    def enqueue(self, prompt: Prompt, params: SamplingParams, prompt_tokens: int) -> _Job:
        """Queue one request; BadRequest(503) when the queue is full."""
        long = request_work(params, prompt_tokens) > self.limits.long_request_tokens
        job = _Job(prompt, params, long)
        try:
            self.scheduler.put(job)
        except BadRequest:
            self.count("rejected_queue_full")
            raise
        return job

    def wait(self, job: _Job, client_gone: Callable[[], bool] = lambda: False) -> GenerationOutput:
        """The job's output; ClientGone / RequestTimeout cancel it (dropped if it still waits)."""
        deadline = time.monotonic() + self.limits.request_timeout_s
        while not job.future.done():
            wait_futures([job.future], timeout=POLL_S)
            if job.future.done():
                break
            if client_gone():
                self.count("cancelled" if self._cancel(job) else "abandoned")
                raise ClientGone()
            if time.monotonic() > deadline:
                self._cancel(job)
                self.count("timed_out")
                raise RequestTimeout(f"no answer within request_timeout_s ({self.limits.request_timeout_s:g} s)")
        return job.future.result()

    def submit(self, prompt: Prompt, params: SamplingParams) -> GenerationOutput:
        """Queue one prompt and wait for its output (in-process use: the request limits are the HTTP layer's)."""
        return self.wait(self.enqueue(prompt, params, count_prompt_tokens(prompt, self.tokenizer)))

    def _cancel(self, job: _Job) -> bool:
        """Drop the job unless it already runs (a generate call cannot be interrupted); True when dropped."""
        self.scheduler.discard(job)
        return job.future.cancel()  # a lane skips a cancelled job it already took

    def _lane(self, long_lane: bool) -> None:
        while (batch := self.scheduler.next_batch(long_lane)) is not None:
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            try:
                if live:
                    self._run(live)
            except Exception as e:  # noqa: BLE001 - a lane that dies would leave every later request waiting
                print(f"llmkit serve: lane error {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)

    def _run(self, jobs: list[_Job]) -> None:
        """One generate call for `jobs`; when it fails, each job again alone (one bad prompt fails only itself)."""
        self.batches.append(len(jobs))
        try:
            outputs = self.generator.generate([j.prompt for j in jobs], jobs[0].params)
            if len(outputs) != len(jobs):
                raise RuntimeError(f"the generator returned {len(outputs)} outputs for {len(jobs)} prompts")
        except Exception as e:  # noqa: BLE001 - the error goes back to the waiting clients
            if len(jobs) == 1:
                jobs[0].future.set_exception(e)
            else:
                for j in jobs:
                    self._run([j])
            return
        for j, out in zip(jobs, outputs):
            j.future.set_result(out)

    def _handler_class(self):
        return _make_handler(self)


def _readable(sock: socket.socket) -> bool:
    """Whether `sock` has data or an end of stream to read now (poll: select() fails on descriptors >= 1024)."""
    if not hasattr(select, "poll"):
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


def _make_handler(server: GeneratorServer):
    """The request handler class bound to `server`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = server.limits.read_timeout_s  # a stalled client cannot hold a thread longer than this

        def log_message(self, fmt, *args):  # quiet: one line per request is noise under load
            pass

        def _send(self, status: int, payload: dict[str, Any], close: bool = False) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 503:
                    self.send_header("Retry-After", str(server.limits.retry_after_s))
                if close:  # the body was not read: what follows on the socket is not a request
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)
            except (ConnectionError, TimeoutError):  # the client left: there is no one to tell
                self.close_connection = True

        def _error(self, status: int, message: str, close: bool = False) -> None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            self._send(status, {"error": {"message": message, "type": kind, "code": status}}, close)

        def _client_gone(self) -> bool:
            """True once the client closed its side (readable with nothing to read) or the socket failed."""
            try:
                return _readable(self.connection) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        def do_GET(self):  # noqa: N802 - http.server's naming
            path = self.path.rstrip("/")
            if path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif path == "/v1/models":
                self._send(
                    200, {"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "llmkit"}]}
                )
            else:
                self._error(404, f"no route {self.path}")

        def _read_body(self) -> bytes:
            """The body, read only when its declared length is valid and within max_body_bytes."""
            if self.headers.get("Transfer-Encoding"):
                raise BadRequest("Transfer-Encoding bodies are not supported: send Content-Length", 411)
            lengths = [v.strip() for v in self.headers.get_all("Content-Length") or []]
            if not lengths:
                raise BadRequest("a POST needs a Content-Length header", 411)
            if len(set(lengths)) > 1 or not _CONTENT_LENGTH.fullmatch(lengths[0]):
                raise BadRequest(f"Content-Length must be one non-negative integer, got {', '.join(lengths)[:40]!r}")
            length, limit = int(lengths[0]), server.limits.max_body_bytes
            if length > limit:
                raise BadRequest(f"the body is {length} bytes, above this server's limit max_body_bytes ({limit})", 413)
            try:
                data = self.rfile.read(length)
            except TimeoutError:
                raise BadRequest(
                    f"the body did not arrive within read_timeout_s ({server.limits.read_timeout_s:g} s)", 408
                ) from None
            if len(data) < length:
                raise BadRequest(f"the body ended after {len(data)} of {length} bytes")
            return data

        def _json_body(self) -> dict[str, Any]:
            text = self._read_body()
            self._body_read = True
            try:
                body = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
            except UnicodeDecodeError as e:
                raise BadRequest(f"the request body is not valid UTF-8 (byte {e.start})") from None
            except RecursionError:
                raise BadRequest("the request body is not JSON: nested too deeply") from None
            except ValueError as e:  # JSONDecodeError, and integers too long to convert
                raise BadRequest(f"the request body is not JSON: {e}") from None
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            return body

        def _accept(self, chat: bool) -> tuple[_Job, int]:
            """Validate the request and queue it: (job, prompt tokens); BadRequest otherwise."""
            body = self._json_body()
            if body.get("model") not in (None, server.model):
                raise BadRequest(
                    f"model {str(body.get('model'))[:80]!r} is not served here (served: {server.model!r})", 404
                )
            prompt, params = prompt_from_request(body, chat), sampling_from_request(body, server.limits)
            tokens = count_prompt_tokens(prompt, server.tokenizer)
            if tokens > server.limits.max_prompt_tokens:
                raise BadRequest(
                    f"the prompt is {tokens} tokens, above this server's limit max_prompt_tokens "
                    f"({server.limits.max_prompt_tokens})"
                )
            if tokens == 0:
                raise BadRequest("the prompt is empty after tokenization")
            return server.enqueue(prompt, params, tokens), tokens

        def do_POST(self):  # noqa: N802
            self._body_read = False
            path = self.path.rstrip("/")
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._error(404, f"no route {self.path}", close=True)
                return
            chat = path.endswith("chat/completions")
            try:
                job, tokens = self._accept(chat)
            except BadRequest as e:
                self._error(e.status, str(e), close=not self._body_read)
                return
            try:
                output = server.wait(job, self._client_gone)
            except ClientGone:
                self.close_connection = True
                return
            except RequestTimeout as e:
                self._error(504, str(e))
                return
            except BadRequest as e:  # the server is shutting down
                self._error(e.status, str(e))
                return
            except Exception as e:  # noqa: BLE001 - a generation error: the client gets its message
                self._error(500, f"{type(e).__name__}: {e}")
                return
            self._send(200, openai_reply(output, server.model, chat, tokens))

    return Handler


def _reject_constant(name: str):
    """json's parse_constant hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not a JSON number")
