"""Client backend for any OpenAI-compatible server (`vllm serve`, `llmkit serve`).

Chat prompts go to `/chat/completions` (the server applies the chat template), text prompts to
`/completions`. Requests run with bounded concurrency; connection errors, timeouts, 429 and 5xx are
retried with exponential backoff; other HTTP errors fail at once with the server's message.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from llmkit.errors import LlmkitError
from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
OPENAI_REPLY_KEYS = {
    "id",
    "object",
    "created",
    "model",
    "choices",
    "usage",
    "system_fingerprint",
    "prompt_logprobs",
    "service_tier",
    "kv_transfer_params",
    "prompt_token_ids",
}


class GenerationError(LlmkitError):
    """The server refused a request, or kept failing after every retry."""


class OpenAIGenerator(Generator):
    """Generate through an OpenAI-compatible HTTP API."""

    backend_name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        api_key: str | None = None,
        show_progress: bool = True,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.api_key = api_key
        self.show_progress = show_progress

    def describe(self) -> dict[str, Any]:
        """Server, model and client settings for results files."""
        return {
            "backend": "openai",
            "base_url": self.base_url,
            "model": self.model,
            "max_concurrency": self.max_concurrency,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
        }

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[GenerationOutput]:
        """One request per prompt (n samples each), at most `max_concurrency` in flight; results in order."""
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(self._one, p, params) for p in prompts]
            return [f.result() for f in tqdm(futures, desc="generate (openai)", disable=not self.show_progress)]

    def _one(self, prompt: Prompt, params: SamplingParams) -> GenerationOutput:
        chat = not isinstance(prompt, str)
        body: dict[str, Any] = {
            "model": self.model,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if chat:
            body["messages"] = prompt
            if params.logprobs:
                body["logprobs"] = True
        else:
            body["prompt"] = prompt
            if params.logprobs:
                body["logprobs"] = 0
        reply = self._post("/chat/completions" if chat else "/completions", body)
        completions = []
        for choice in sorted(reply.get("choices", []), key=lambda c: c.get("index", 0)):
            text = choice["message"]["content"] if chat else choice["text"]
            logprobs = None
            if params.logprobs and choice.get("logprobs"):
                lp = choice["logprobs"]
                logprobs = [t["logprob"] for t in lp["content"]] if chat else list(lp.get("token_logprobs") or [])
            reason = "length" if choice.get("finish_reason") == "length" else "stop"
            completions.append(
                Completion(
                    text=text or "",
                    token_ids=list(choice.get("token_ids") or []),
                    finish_reason=reason,
                    logprobs=logprobs,
                )
            )
        if len(completions) != params.n:
            raise GenerationError(f"server returned {len(completions)} completions, asked for {params.n}")
        # Keep what a server adds beyond the OpenAI schema (llmkit serve --safety: the route taken).
        extras = {k: v for k, v in reply.items() if k not in OPENAI_REPLY_KEYS}
        return GenerationOutput(
            prompt_text=prompt if isinstance(prompt, str) else json.dumps(prompt),
            completions=completions,
            metadata=extras,
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + random.random() * 0.25))
            request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                message = exc.read().decode(errors="replace")[:300]
                if exc.code not in RETRYABLE_STATUS:
                    raise GenerationError(f"{self.base_url}{path}: HTTP {exc.code}: {message}") from exc
                last_error = f"HTTP {exc.code}: {message}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        raise GenerationError(f"{self.base_url}{path} failed after {self.max_retries + 1} attempts: {last_error}")
