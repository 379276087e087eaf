"""RetroPrompt (retrieval-augmented prompt learning; docs/methods/retroprompt.md): its core as small pure functions.

The method keeps an open-book *knowledge store* built from the training set and uses it three ways:

* input side: **neural demonstrations**: for every class, the query's top-k same-class neighbours,
  weighted by a softmax over their z-normalised similarities, summed into one dense vector per class
  that replaces the input embedding at a reserved slot of the template;
* training: **kNN-guided loss** CE · (1 + β · NLL_kNN), which scales the loss up where the
  neighbourhood disagrees with the gold label (hard, atypical examples); the neighbourhood leaves the
  example itself out (`training_knn_distribution`);
* inference: **kNN interpolation** P = λ·p_kNN + (1 − λ)·p_LM.

The store is rebuilt with the current encoder at the start of every epoch and after every evaluation
(`StoreRefreshSchedule`). For a causal LM the key of an example is the final hidden state (after the
last norm, i.e. what the LM head multiplies) at the position that predicts the label word
(`label_position_forward`); the paper's masked-LM key is the LM head's transformed `[MASK]` feature.

Search is exact, unnormalised inner product: FAISS `IndexFlatIP` when `faiss` is importable (the
optional `faiss-cpu` package), else a torch matrix product with the same results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

# log p_kNN(y) is clamped here before the NLL, as in the authors' knnLoss: an empty neighbourhood for the
# gold class gives a large but finite weight instead of inf.
LOG_PROB_FLOOR = -100.0


@dataclass
class RetroPromptRetrievalConfig:
    """RetroPrompt's knobs; defaults are the paper's GLUE settings (docs/methods/retroprompt.md)."""

    # kNN store neighbours for p_kNN: 16 for GLUE (64 for RE, 16 for CV).
    knn_k: int = 16
    # β of CE · (1 + β · NLL_kNN): 1e-4 in the GLUE script (tuned over 1e-4…10).
    knn_beta: float = 1e-4
    # λ of the inference mixture: 0.2 for GLUE (RE grid 0.1/0.2/0.5; CV 0.5).
    knn_lambda: float = 0.2
    # p_kNN = softmax(⟨h_q, k_j⟩ / T) over the K neighbours; 1.0 for GLUE, 0.05 for RE.
    knn_temperature: float = 1.0
    # p_kNN of the kNN-guided loss leaves each training example's own store row out, as the neural
    # demonstrations do (issue 25). A training query is its own snapshot key, so without this its top
    # neighbour is itself, p_kNN(gold) ≈ 1 and NLL_kNN ≈ 0 (SmolLM2, SST-2: 1e-5): the loss is plain CE
    # for any β. False is the authors' code (the query stays in the store), kept for fidelity only.
    knn_exclude_self: bool = True
    # Same-class neighbours per demonstration vector: 8 for 16-shot, 2 for 4-shot.
    demo_topk: int = 8
    # "keep": insert the demonstration vectors as they are (the paper). "match_embeddings": rescale each
    # to the mean norm of the input-embedding rows first; a causal LM's final hidden states are much
    # longer than its input embeddings (SmolLM2-135M: ≈ 40 vs 3.2), which the paper's setting may not share.
    demo_norm: Literal["keep", "match_embeddings"] = "keep"
    # The ablation arms: neural demonstrations, kNN-guided training, kNN interpolation at inference.
    use_demonstrations: bool = True
    knn_train: bool = True
    knn_infer: bool = True
    # "linear": λ·p_kNN + (1−λ)·p_LM. "paper_logsumexp": the authors' code, log((1−λ)e^{p_LM} + λe^{p_kNN})
    # over probabilities (see `interpolate_knn`).
    interpolation: Literal["linear", "paper_logsumexp"] = "linear"
    # "batch_mean": the authors' mean CE × (1 + β · mean NLL) over a batch. "per_example":
    # mean_i CE_i · (1 + β · NLL_i), which does not depend on how a step is split into micro-batches.
    loss_form: Literal["batch_mean", "per_example"] = "batch_mean"
    refresh_every_epoch: bool = True
    refresh_after_eval: bool = True
    search_backend: Literal["auto", "faiss", "torch"] = "auto"

    def __post_init__(self):
        for name in ("knn_k", "demo_topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.knn_beta < 0:
            raise ValueError(f"knn_beta must be >= 0, got {self.knn_beta}")
        if not 0.0 <= self.knn_lambda <= 1.0:
            raise ValueError(f"knn_lambda must be in [0, 1], got {self.knn_lambda}")
        if self.knn_temperature <= 0:
            raise ValueError(f"knn_temperature must be > 0, got {self.knn_temperature}")


# ----- knowledge store ---------------------------------------------------------------------------------


def faiss_available() -> bool:
    """Whether the optional `faiss` package (faiss-cpu) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class KnowledgeStore:
    """Keys (one representation per training example) with their class labels, searched by inner product.

    `keys` is [N, d], `labels` is [N] with values in [0, num_classes). The store keeps a float32 CPU copy
    of the keys (detached: it is a snapshot of the encoder, rebuilt on the refresh schedule). Row i of
    the store is training example i, so a training query excludes itself by passing its own index.
    """

    def __init__(
        self,
        keys: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        backend: Literal["auto", "faiss", "torch"] = "auto",
    ):
        if keys.ndim != 2:
            raise ValueError(f"store keys must be a [N, d] matrix, got shape {tuple(keys.shape)}")
        if keys.shape[0] == 0:
            raise ValueError("the knowledge store is empty: it needs at least one training example")
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.shape[0] != keys.shape[0]:
            raise ValueError(f"store has {keys.shape[0]} keys but {labels.shape[0]} labels")
        check_labels(labels, num_classes, "store label")
        if backend == "faiss" and not faiss_available():
            raise ValueError("search_backend 'faiss' needs the faiss-cpu package (pip install faiss-cpu)")
        self.keys = keys.detach().to("cpu", torch.float32).contiguous()
        self.labels = labels.to("cpu", torch.long)
        self.num_classes = num_classes
        self.backend = "faiss" if backend == "faiss" or (backend == "auto" and faiss_available()) else "torch"
        self._index = None
        if self.backend == "faiss":
            import faiss

            self._index = faiss.IndexFlatIP(self.keys.shape[1])
            self._index.add(self.keys.numpy())
        self._class_stores: dict[int, tuple[KnowledgeStore, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.keys.shape[0]

    @property
    def dim(self) -> int:
        """Dimension d of the keys."""
        return self.keys.shape[1]

    def search(
        self, queries: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k inner-product search: (scores [Q, k], store indices [Q, k]), best first.

        `exclude_ids` [Q] (optional) names, per query, one store row that must not be returned
        (leave-one-out: a training example's own index; −1 excludes nothing). With exclusion, k may be
        at most N − 1.
        """
        queries = self._check_queries(queries)
        excluding = exclude_ids is not None
        limit = len(self) - 1 if excluding else len(self)
        if k < 1 or k > limit:
            raise ValueError(
                f"k = {k} neighbours asked of a store of {len(self)} keys"
                + (" with the query itself excluded" if excluding else "")
                + f": k must be in [1, {limit}]"
            )
        if excluding:
            exclude_ids = torch.as_tensor(exclude_ids, dtype=torch.long).reshape(-1).cpu()
            if exclude_ids.shape[0] != queries.shape[0]:
                raise ValueError(f"{queries.shape[0]} queries but {exclude_ids.shape[0]} exclude_ids")
            if exclude_ids.numel() and int(exclude_ids.max()) >= len(self):
                raise ValueError(f"exclude id {int(exclude_ids.max())} is not a row of a store of {len(self)} keys")
        if self.backend == "faiss":
            return self._search_faiss(queries, k, exclude_ids)
        scores = queries @ self.keys.T
        if excluding:
            rows = torch.nonzero(exclude_ids >= 0).reshape(-1)
            scores[rows, exclude_ids[rows]] = float("-inf")
        top_scores, top_ids = torch.topk(scores, k, dim=1)
        return top_scores, top_ids

    def _search_faiss(self, queries, k, exclude_ids):
        # One extra neighbour covers the excluded row; if it is not among them, the extra is dropped.
        fetch = k + 1 if exclude_ids is not None else k
        scores, ids = self._index.search(queries.numpy(), fetch)
        scores, ids = torch.from_numpy(scores), torch.from_numpy(ids).long()
        if exclude_ids is None:
            return scores, ids
        keep = ids != exclude_ids[:, None]
        # Keep the first k kept entries of every row (a row has fetch or fetch − 1 of them).
        keep &= keep.long().cumsum(dim=1) <= k
        return scores[keep].reshape(-1, k), ids[keep].reshape(-1, k)

    def class_members(self, label: int) -> torch.Tensor:
        """Store indices of the examples of class `label`, ascending."""
        return self._class_store(label)[1]

    def search_class(
        self, queries: torch.Tensor, label: int, k: int, exclude_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k search among the keys of class `label` only; returns global store indices.

        `exclude_ids` are global store indices (−1 or an index of another class excludes nothing).
        """
        sub_store, members = self._class_store(label)
        local_exclude = None
        if exclude_ids is not None:
            exclude_ids = torch.as_tensor(exclude_ids, dtype=torch.long).reshape(-1).cpu()
            if exclude_ids.numel() and int(exclude_ids.max()) >= len(self):
                raise ValueError(f"exclude id {int(exclude_ids.max())} is not a row of a store of {len(self)} keys")
            local_of_global = torch.full((len(self),), -1, dtype=torch.long)
            local_of_global[members] = torch.arange(members.numel())
            local_exclude = torch.where(exclude_ids >= 0, local_of_global[exclude_ids.clamp(min=0)], -1)
            # No query belongs to this class: nothing to leave out, and all its keys are candidates.
            if bool((local_exclude < 0).all()):
                local_exclude = None
        if k > members.numel() - (1 if local_exclude is not None else 0):
            raise ValueError(
                f"class {label} has {members.numel()} examples in the store; {k} same-class neighbours "
                + ("(leaving the query out) " if local_exclude is not None else "")
                + "cannot be found: lower demo_topk"
            )
        # Queries of other classes carry −1 here and lose nothing.
        scores, local_ids = sub_store.search(queries, k, local_exclude)
        return scores, members[local_ids]

    def _class_store(self, label: int) -> tuple[KnowledgeStore, torch.Tensor]:
        check_labels(torch.tensor([label]), self.num_classes, "class")
        if label not in self._class_stores:
            members = torch.nonzero(self.labels == label).reshape(-1)
            if members.numel() == 0:
                raise ValueError(f"class {label} has no examples in the knowledge store")
            sub_store = KnowledgeStore(self.keys[members], self.labels[members], self.num_classes, backend=self.backend)
            self._class_stores[label] = (sub_store, members)
        return self._class_stores[label]

    def _check_queries(self, queries: torch.Tensor) -> torch.Tensor:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got shape {tuple(queries.shape)}")
        return queries.detach().to("cpu", torch.float32).contiguous()


def check_labels(labels: torch.Tensor, num_classes: int, what: str = "label") -> None:
    """Raise ValueError unless every label is an integer in [0, num_classes)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{what}s must be integer class ids, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{what} {int(bad)} is out of range: classes are 0..{num_classes - 1}")


# ----- neural demonstrations ---------------------------------------------------------------------------


def zscore_softmax_weights(similarities: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Softmax over the z-normalised similarities of each row: softmax((s − mean) / std).

    The standard deviation is the population one (ddof = 0). A row whose similarities are all equal
    (including a single neighbour) has no spread to normalise and gets uniform weights.
    Z-normalising makes the weights independent of the scale of the inner products, which grows with
    the norm of the representations.
    """
    mean = similarities.mean(dim=-1, keepdim=True)
    std = similarities.std(dim=-1, keepdim=True, correction=0)
    z = torch.where(std > eps, (similarities - mean) / std.clamp(min=eps), torch.zeros_like(similarities))
    return torch.softmax(z, dim=-1)


def neural_demonstrations(
    store: KnowledgeStore, queries: torch.Tensor, demo_topk: int, exclude_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """One dense demonstration vector per class for each query: [Q, C, d].

    For class c: the query's `demo_topk` most similar keys of class c, weighted by
    `zscore_softmax_weights` of their similarities and summed. In training pass each query's own store
    index as `exclude_ids` (leave-one-out), so an example is never its own demonstration.
    """
    vectors = []
    for label in range(store.num_classes):
        scores, ids = store.search_class(queries, label, demo_topk, exclude_ids)
        weights = zscore_softmax_weights(scores)
        vectors.append(torch.einsum("qk,qkd->qd", weights, store.keys[ids]))
    return torch.stack(vectors, dim=1)


def match_norm(vectors: torch.Tensor, target_norm: float | torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each vector (last dimension) rescaled to length `target_norm`; zero vectors stay zero."""
    norms = vectors.norm(dim=-1, keepdim=True)
    return vectors * (target_norm / norms.clamp(min=eps))


def insert_demonstrations(
    inputs_embeds: torch.Tensor, slot_positions: torch.Tensor, demo_vectors: torch.Tensor
) -> torch.Tensor:
    """Input embeddings [B, T, d] with row b's slots `slot_positions[b, c]` replaced by `demo_vectors[b, c]`.

    Out of place: gradients still flow to the other positions' embeddings. The demonstration vectors
    come from the store (a detached snapshot), so no gradient flows into them.
    """
    if slot_positions.shape != demo_vectors.shape[:2]:
        raise ValueError(
            f"slot_positions {tuple(slot_positions.shape)} must match demo_vectors [B, C] = "
            f"{tuple(demo_vectors.shape[:2])}"
        )
    if demo_vectors.shape[-1] != inputs_embeds.shape[-1]:
        raise ValueError(
            f"demonstration vectors have d = {demo_vectors.shape[-1]}, the input embeddings {inputs_embeds.shape[-1]}"
        )
    rows = torch.arange(inputs_embeds.shape[0], device=inputs_embeds.device)[:, None]
    out = inputs_embeds.clone()
    out[rows, slot_positions.to(inputs_embeds.device)] = demo_vectors.to(inputs_embeds.device, inputs_embeds.dtype)
    return out


# ----- kNN distribution, loss and interpolation --------------------------------------------------------


def knn_class_distribution(
    neighbour_scores: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float = 1.0
) -> torch.Tensor:
    """p_kNN(y | q) = Σ_{j ∈ top-K} softmax_j(⟨h_q, k_j⟩ / T) · 1[v_j = y], as [Q, C].

    `neighbour_scores` and `neighbour_labels` are [Q, K] (from `KnowledgeStore.search` and
    `store.labels[ids]`). A class with no neighbour gets probability 0.
    """
    if neighbour_scores.shape != neighbour_labels.shape:
        raise ValueError(
            f"neighbour scores {tuple(neighbour_scores.shape)} and labels {tuple(neighbour_labels.shape)} "
            f"differ in shape"
        )
    check_labels(neighbour_labels, num_classes, "neighbour label")
    weights = torch.softmax(neighbour_scores.float() / temperature, dim=-1)
    probs = torch.zeros(neighbour_scores.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return probs.scatter_add_(1, neighbour_labels.long().to(weights.device), weights)


def knn_distribution(
    store: KnowledgeStore,
    queries: torch.Tensor,
    k: int,
    temperature: float = 1.0,
    exclude_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """p_kNN [Q, C] of `queries` from their k nearest store entries (see `knn_class_distribution`)."""
    scores, ids = store.search(queries, k, exclude_ids)
    return knn_class_distribution(scores, store.labels[ids], store.num_classes, temperature)


def training_knn_distribution(
    store: KnowledgeStore, rows: torch.Tensor, k: int, temperature: float = 1.0, leave_one_out: bool = True
) -> torch.Tensor:
    """p_kNN [B, C] of training examples that are rows `rows` [B] of the store, for the kNN-guided loss.

    A training query is its own snapshot key `store.keys[rows]`. With `leave_one_out` each query's own
    row is excluded from its neighbours: by row index (the example's identity), not by score, through the
    same `exclude_ids` search the neural demonstrations use, so another example with an identical key (a
    duplicated text) still counts. Then k may be at most len(store) − 1. Without it (the authors' code)
    the query's top neighbour is itself, with score ‖k_i‖² far above the rest, and NLL_kNN ≈ 0.
    Test queries are not store rows: use `knn_distribution` for them.
    """
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1).cpu()
    # −1 would mean "exclude nothing" to the search and index the last key here: refuse it.
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(store)):
        bad = rows[(rows < 0) | (rows >= len(store))][0]
        raise ValueError(f"training row {int(bad)} is not a row of a store of {len(store)} keys")
    return knn_distribution(store, store.keys[rows], k, temperature, rows if leave_one_out else None)


def knn_negative_log_likelihood(p_knn: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log p_kNN(y_true) per example [B], with log p clamped at −100 (p_kNN is treated as a constant)."""
    gold = p_knn.detach().gather(1, targets.long()[:, None]).squeeze(1)
    return -torch.log(gold).clamp(min=LOG_PROB_FLOOR)


def knn_guided_loss(
    class_logits: torch.Tensor,
    p_knn: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    form: Literal["batch_mean", "per_example"] = "batch_mean",
) -> torch.Tensor:
    """The kNN-guided training loss CE · (1 + β · NLL_kNN), a scalar (mean over the batch).

    `class_logits` [B, C] are the label-word logits, `p_knn` [B, C] the kNN distribution (no gradient
    flows through it: it only weights the loss), `targets` [B] the gold classes.

    * "batch_mean" (the authors' code): mean_B(CE) · (1 + β · mean_B(NLL_kNN)).
    * "per_example": mean_B(CE_i · (1 + β · NLL_i)), whose sum over examples does not depend on how a
      step is split into micro-batches.

    β = 0 gives plain cross-entropy in both forms.
    """
    num_classes = class_logits.shape[-1]
    if p_knn.shape != class_logits.shape:
        raise ValueError(f"p_knn {tuple(p_knn.shape)} and class_logits {tuple(class_logits.shape)} differ in shape")
    check_labels(targets, num_classes, "target")
    cross_entropy = F.cross_entropy(class_logits.float(), targets.long(), reduction="none")
    nll = knn_negative_log_likelihood(p_knn, targets).to(cross_entropy.device)
    if form == "batch_mean":
        return cross_entropy.mean() * (1.0 + beta * nll.mean())
    if form == "per_example":
        return (cross_entropy * (1.0 + beta * nll)).mean()
    raise ValueError(f"unknown kNN loss form {form!r}: use 'batch_mean' or 'per_example'")


def interpolate_knn(
    p_lm: torch.Tensor,
    p_knn: torch.Tensor,
    knn_lambda: float,
    mode: Literal["linear", "paper_logsumexp"] = "linear",
) -> torch.Tensor:
    """Class scores [B, C] combining the LM's label-word distribution with the kNN distribution.

    * "linear" (default): the mixture P = λ·p_kNN + (1 − λ)·p_LM, a probability distribution.
    * "paper_logsumexp": what the authors' code computes, log((1 − λ)·e^{p_LM} + λ·e^{p_kNN}) with
      *probabilities* as inputs. Monotone in each term but not a distribution, and its argmax can differ
      from the linear mixture's; kept for fidelity.

    Both give p_LM at λ = 0 and p_kNN at λ = 1.
    """
    if p_lm.shape != p_knn.shape:
        raise ValueError(f"p_lm {tuple(p_lm.shape)} and p_knn {tuple(p_knn.shape)} differ in shape")
    if not 0.0 <= knn_lambda <= 1.0:
        raise ValueError(f"knn_lambda must be in [0, 1], got {knn_lambda}")
    p_knn = p_knn.to(p_lm.device, p_lm.dtype)
    if mode == "linear":
        return knn_lambda * p_knn + (1.0 - knn_lambda) * p_lm
    if mode == "paper_logsumexp":
        # log(0) = −inf drops a term exactly at λ = 0 or 1; logsumexp handles it.
        log_weights = (
            math.log(1.0 - knn_lambda) if knn_lambda < 1 else float("-inf"),
            math.log(knn_lambda) if knn_lambda > 0 else float("-inf"),
        )
        return torch.logsumexp(torch.stack([p_lm + log_weights[0], p_knn + log_weights[1]]), dim=0)
    raise ValueError(f"unknown interpolation mode {mode!r}: use 'linear' or 'paper_logsumexp'")


# ----- refresh schedule --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreRefreshSchedule:
    """When to rebuild the knowledge store with the current encoder ("asynchronous refresh").

    Steps count optimizer steps already taken, as the shared trainer's `global_step`: before taking
    step s (s steps done) the store is rebuilt when s = 0 (no store yet), when s starts an epoch
    (s % steps_per_epoch == 0), or when an evaluation ran after step s (s % eval_steps == 0, the
    trainer's rule). A store lost to a restart (resume) must be rebuilt whatever the schedule says:
    pass `have_store=False`.
    """

    steps_per_epoch: int
    eval_steps: int = 0  # 0: no periodic evaluation
    every_epoch: bool = True
    after_eval: bool = True

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.eval_steps < 0:
            raise ValueError(f"eval_steps must be >= 0, got {self.eval_steps}")

    def reason(self, steps_done: int, have_store: bool = True) -> str | None:
        """Why the store must be rebuilt before the next step ("start", "epoch", "evaluation"), or None."""
        if steps_done == 0 or not have_store:
            return "start"
        if self.every_epoch and steps_done % self.steps_per_epoch == 0:
            return "epoch"
        if self.after_eval and self.eval_steps > 0 and steps_done % self.eval_steps == 0:
            return "evaluation"
        return None

    def is_due(self, steps_done: int, have_store: bool = True) -> bool:
        """Whether to rebuild the store before the step that follows `steps_done` steps."""
        return self.reason(steps_done, have_store) is not None

    def rebuild_points(self, total_steps: int) -> list[int]:
        """Every `steps_done` in [0, total_steps) at which the store is rebuilt (for logs and tests)."""
        return [s for s in range(total_steps) if self.is_due(s)]


# ----- causal-LM features and label-word scores --------------------------------------------------------


@dataclass
class LabelPositionOutput:
    """What one forward pass gives at the label position of each row."""

    features: torch.Tensor  # [B, d]: final hidden state (after the last norm) that the LM head multiplies
    label_logits: torch.Tensor  # [B, C]: logits of the label words at that position


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row [B] (right or left padding), from a [B, T] 0/1 mask."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [B, T], got shape {tuple(attention_mask.shape)}")
    lengths = attention_mask.long().sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("a row of the batch has no real token (all-zero attention mask)")
    # The largest index holding a 1: argmax over position · mask picks it for either padding side.
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions[None, :] * attention_mask.long()).argmax(dim=1)


def _accepts_logits_to_keep(model) -> bool:
    """Whether the (unwrapped: DDP, peft) model's forward takes transformers' `logits_to_keep`."""
    import inspect

    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def label_position_forward(
    model, batch: dict[str, Any], label_word_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None
) -> LabelPositionOutput:
    """Features and label-word logits at the label position of each row, in one forward pass.

    For a causal LM the label word is predicted by the prompt's last token, so the label position is
    `batch["label_positions"]` [B] when given, else the last real token of each row. `batch` holds
    `input_ids` and `attention_mask`; `inputs_embeds` (e.g. with demonstrations inserted) replaces
    the embedding of `input_ids` when given. The label logits are the LM head applied to the feature,
    which equals the model's logits there for LMs whose logits are lm_head(h) (Llama, SmolLM2).
    """
    attention_mask = batch["attention_mask"]
    positions = batch.get("label_positions")
    if positions is None:
        positions = last_token_positions(attention_mask)
    if inputs_embeds is not None:
        inputs = {"inputs_embeds": inputs_embeds}
    else:
        inputs = {"input_ids": batch["input_ids"]}
    if _accepts_logits_to_keep(model):
        # Only the label position's features are used: skip the vocabulary projection of every position
        # (for SmolLM2, 49k × 576 multiply-adds per token, ~20% of the forward), keeping one position.
        inputs["logits_to_keep"] = 1
    outputs = model(**inputs, attention_mask=attention_mask, output_hidden_states=True)
    final_hidden = outputs.hidden_states[-1]
    rows = torch.arange(final_hidden.shape[0], device=final_hidden.device)
    features = final_hidden[rows, positions.to(final_hidden.device)]
    # A DistributedDataParallel wrapper forwards calls but not methods; the head lives on its module.
    lm_head = getattr(model, "module", model).get_output_embeddings()
    label_weights = lm_head.weight[label_word_ids.to(lm_head.weight.device)]
    # Under mixed precision the hidden states can be bf16 while the head's weights stay fp32.
    label_logits = features.to(label_weights.dtype) @ label_weights.T
    if getattr(lm_head, "bias", None) is not None:
        label_logits = label_logits + lm_head.bias[label_word_ids.to(lm_head.weight.device)]
    return LabelPositionOutput(features=features, label_logits=label_logits)


def label_position_features(model, batch: dict[str, Any], inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """The store key of each row [B, d]: the final hidden state at the label position (no gradient)."""
    with torch.no_grad():
        empty = torch.zeros(0, dtype=torch.long)
        return label_position_forward(model, batch, empty, inputs_embeds).features


def label_word_logits(
    model, batch: dict[str, Any], label_word_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of the label words at the label position [B, C] (differentiable; for CE and p_LM)."""
    return label_position_forward(model, batch, label_word_ids, inputs_embeds).label_logits


def label_word_token_ids(tokenizer, words: list[str]) -> torch.Tensor:
    """Token id of each label word [C]; each word must be one token and the ids distinct.

    Write the words as they appear after the template (usually with a leading space, " great").
    """
    ids = []
    for word in words:
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"label word {word!r} is {len(tokens)} tokens {tokens}; label words must be one token")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {words} do not map to distinct tokens: {ids}")
    return torch.tensor(ids, dtype=torch.long)
