"""The one generation interface: prompts (text or chat messages) + SamplingParams → completions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy; `stop` strings end a completion and are not returned."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic (temperature 0)."""
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled continuation."""

    text: str
    token_ids: list[int]
    # "prompt_too_long": the prompt alone exceeds the engine's context; no generation, empty text.
    finish_reason: Literal["stop", "length", "prompt_too_long"]
    logprobs: list[float] | None = None  # log p(token) under the model, one per token id, when asked


@dataclass
class GenerationOutput:
    """The n completions of one prompt, with the exact text the model saw."""

    prompt_text: str
    completions: list[Completion]
    # Server-side extras returned with the answer, e.g. {"safethinker": {"route": "twin", "score": 0.4}}
    metadata: dict[str, Any] = field(default_factory=dict)


class Generator(ABC):
    """A generation backend. `generate` returns one GenerationOutput per prompt, in order."""

    backend_name: str = "base"

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[GenerationOutput]:
        """Generate `params.n` completions for each prompt."""

    def describe(self) -> dict[str, Any]:
        """Settings to record in results files (backend, model, batch size ...)."""
        return {"backend": self.backend_name}

    def close(self) -> None:
        """Release resources (engines, servers, sessions)."""


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; return (text, whether a stop string was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
