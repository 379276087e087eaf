"""`llmkit select`: read a pool, score it, select a subset, write the subset and a report.

Outputs in `output_dir`: `subset.jsonl` (the selected records, with `_pool_index`, `_cluster` and, when
computed, `_ifd`), `selection.json` (settings, counts, coverage, timings), `report.md`,
`cluster_counts.png`, and `ifd_hist.png` / `centroid_loss.png` where they apply. IFD scores and
embeddings are cached in `cache_dir` (default: `output_dir`), so several methods on one pool share them
and an interrupted IFD run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmkit.data.embeddings import DEFAULT_EMBEDDER, embed_texts
from llmkit.data.loading import SOURCE_KEY, BadRowPolicy, BadRows, read_records
from llmkit.data.selection import coverage, methods
from llmkit.data.selection.ifd import IFD_PROMPT, score_ifd
from llmkit.data.sft import check_columns, column_value
from llmkit.errors import DataError
from llmkit.io import atomic_open, atomic_write_json, atomic_write_text
from llmkit.models import ModelConfig

logger = logging.getLogger(__name__)
METHODS = ("cdas", "distribution", "random", "ifd", "kcenter")


@dataclass
class SelectionConfig:
    """How to select (paper defaults; docs/methods/code_selection.md). Recipes embed this as their selection section."""

    method: Literal["cdas", "distribution", "random", "ifd", "kcenter"] = "cdas"
    # subset size for distribution / random / ifd / kcenter: a fraction of the pool if <= 1, else a count
    budget: float = 0.4
    cdas_ratio: float = 0.4  # m: kept share of each IFD-filtered cluster
    num_clusters: int = 10
    kmeans_seed: int = 42
    max_ifd: float = 1.0
    ifd_max_length: int = 2048
    ifd_batch_size: int = 8
    ifd_prompt_format: str = IFD_PROMPT
    embedder: str = DEFAULT_EMBEDDER
    tau: float = 0.07
    balance: float = 1.0
    iterations: int = 300
    centroid_lr: float = 1e-3
    slice_size: int = 20_000
    seed: int = 0
    cache_dir: str | None = None  # IFD scores and embeddings, shared by methods on one pool

    def __post_init__(self):
        if self.budget <= 0:
            raise ValueError(f"budget must be > 0, got {self.budget}")
        if not 0 < self.cdas_ratio <= 1:
            raise ValueError(f"cdas_ratio must be in (0, 1], got {self.cdas_ratio}")
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {self.num_clusters}")


@dataclass
class SelectConfig(SelectionConfig):
    """`llmkit select`: the selection settings plus the pool, the scoring model and the output folder."""

    data_path: str = "codealpaca/code_alpaca_2k.json"
    split: str = "train"
    format: Literal["auto", "jsonl", "json", "csv", "parquet"] = "auto"
    instruction_column: list[str] = field(default_factory=lambda: ["instruction", "input"])
    response_column: str = "output"
    max_rows: int | None = None
    on_bad_row: Literal["skip", "error"] = "skip"
    output_dir: str = "outputs/select"
    model: ModelConfig = field(default_factory=ModelConfig)  # the model to be tuned scores IFD

    def budget_count(self, pool_size: int) -> int:
        """The subset size the budget means for a pool of `pool_size`."""
        count = int(self.budget * pool_size) if self.budget <= 1 else int(self.budget)
        if not 1 <= count <= pool_size:
            raise DataError(f"budget {self.budget} gives {count} samples; the pool has {pool_size}")
        return count


def load_pool(cfg: SelectConfig) -> tuple[list[dict[str, Any]], list[str], list[str], BadRows]:
    """Records with a non-empty instruction and response, their texts, and the tally of skipped rows."""
    tally = BadRows()
    bad = BadRowPolicy(cfg.on_bad_row, tally)
    records = read_records(cfg.data_path, cfg.split, cfg.format, bad, cfg.max_rows)
    if records:
        check_columns(records, {"prompt": cfg.instruction_column, "response": cfg.response_column}, cfg.data_path)
    kept, instructions, responses = [], [], []
    for row in records:
        q, a = column_value(row, cfg.instruction_column), column_value(row, cfg.response_column)
        if q is None or not str(q).strip() or a is None or not str(a).strip():
            bad(row.get(SOURCE_KEY, "?"), "empty instruction or response")
            continue
        kept.append(row)
        instructions.append(str(q))
        responses.append(str(a))
    if tally.count:
        logger.warning("%s: %s", cfg.data_path, tally.summary())
    if not kept:
        raise DataError(f"{cfg.data_path}: no usable rows to select from ({tally.count} skipped)")
    return kept, instructions, responses, tally


def cached_embeddings(texts: list[str], model_name: str, cache: Path) -> np.ndarray:
    """Embeddings of `texts`, reused from `cache` when the texts and the model are the same."""
    digest = hashlib.sha256(("\x00".join(texts) + "\x01" + model_name).encode()).hexdigest()
    vectors, meta = cache / "embeddings.npy", cache / "embeddings.json"
    if vectors.exists() and meta.exists() and json.loads(meta.read_text()).get("sha256") == digest:
        return np.load(vectors)
    emb = embed_texts(texts, model_name)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_open(vectors, "wb") as fh:
        np.save(fh, emb)
    atomic_write_text(
        meta, json.dumps({"sha256": digest, "model": model_name, "count": len(texts), "dim": int(emb.shape[1])})
    )
    return emb


def compute_ifd(
    cfg: SelectConfig, instructions: list[str], responses: list[str], cache: Path
) -> tuple[np.ndarray, int]:
    """IFD scores with the configured model (resumable through `cache/ifd_scores.jsonl`)."""
    from llmkit.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg.model)
    # one scores file per scoring setting; inside it, scores are keyed by the pair's text
    # (a fresh LoRA adapter does not change the outputs, so it does not change the scores)
    model_id = {k: v for k, v in asdict(cfg.model).items() if k not in ("lora", "gradient_checkpointing")}
    tag = hashlib.sha256(
        json.dumps([model_id, cfg.ifd_max_length, cfg.ifd_prompt_format], sort_keys=True).encode()
    ).hexdigest()[:10]
    return score_ifd(
        model,
        tokenizer,
        instructions,
        responses,
        cache / f"ifd_scores-{tag}.jsonl",
        cfg.ifd_max_length,
        cfg.ifd_batch_size,
        cfg.ifd_prompt_format,
    )


def run_selection(cfg: SelectConfig) -> dict[str, Any]:
    """Select with `cfg.method`; write subset.jsonl, selection.json, report.md and plots; return the summary."""
    started = time.time()
    out = Path(cfg.output_dir)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out
    out.mkdir(parents=True, exist_ok=True)
    records, instructions, responses, tally = load_pool(cfg)
    n = len(records)
    timings: dict[str, float] = {}

    t = time.time()
    emb = cached_embeddings(instructions, cfg.embedder, cache)
    timings["embed_s"] = time.time() - t
    t = time.time()
    clusters = methods.kmeans_clusters(emb, min(cfg.num_clusters, n), cfg.kmeans_seed)
    timings["kmeans_s"] = time.time() - t

    ifd, failures, extra = None, 0, {}
    if cfg.method in ("cdas", "ifd"):
        t = time.time()
        ifd, failures = compute_ifd(cfg, instructions, responses, cache)
        timings["ifd_s"] = time.time() - t
        if failures:
            logger.warning("IFD: %d of %d pairs could not be scored and got IFD = 0", failures, n)

    t = time.time()
    if cfg.method == "cdas":
        selected = methods.cdas_select(ifd, clusters, cfg.cdas_ratio, cfg.max_ifd)
        extra["clusters"] = methods.cdas_quotas(ifd, clusters, cfg.cdas_ratio, cfg.max_ifd)
    elif cfg.method == "ifd":
        selected = methods.top_ifd_select(ifd, cfg.budget_count(n), cfg.max_ifd)
    elif cfg.method == "random":
        selected = methods.random_select(n, cfg.budget_count(n), cfg.seed)
    elif cfg.method == "kcenter":
        selected = methods.kcenter_select(emb, cfg.budget_count(n), cfg.seed)
    else:
        selected, curve = methods.distribution_select(
            emb, cfg.budget_count(n), cfg.tau, cfg.balance, cfg.iterations, cfg.centroid_lr, cfg.slice_size, cfg.seed
        )
        extra["centroid_loss"] = {"first": curve[0], "last": curve[-1]}
        plot_curve(out / "centroid_loss.png", curve)
    timings["select_s"] = time.time() - t
    if len(set(selected.tolist())) != len(selected):
        raise AssertionError("selection returned duplicate indices")  # a bug, never a user error

    write_subset(out / "subset.jsonl", records, selected, clusters, ifd)
    summary = {
        "method": cfg.method,
        "pool": n,
        "skipped_rows": tally.count,
        "selected": int(len(selected)),
        "coverage": coverage.coverage_report(emb, clusters, selected),
        "ifd": None
        if ifd is None
        else {
            "failures": failures,
            "pool_mean": float(ifd.mean()),
            "selected_mean": float(ifd[selected].mean()),
            "pool_at_least_max": int((ifd >= cfg.max_ifd).sum()),
        },
        **extra,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "wall_s": round(time.time() - started, 2),
        "config": asdict(cfg),
    }
    atomic_write_json(out / "selection.json", summary)
    plot_cluster_counts(out / "cluster_counts.png", clusters, selected, cfg.method)
    if ifd is not None:
        plot_ifd(out / "ifd_hist.png", ifd, selected, cfg.max_ifd)
    write_report(out, summary, clusters, selected)
    return summary


def write_subset(path: Path, records, selected: np.ndarray, clusters: np.ndarray, ifd: np.ndarray | None) -> None:
    """The selected records in selection order, atomically (a crash leaves no half-written subset)."""
    with atomic_open(path, "w") as fh:
        for i in selected.tolist():
            row = {k: v for k, v in records[i].items() if k != SOURCE_KEY}
            row.update({"_pool_index": i, "_cluster": int(clusters[i])})
            if ifd is not None:
                row["_ifd"] = float(ifd[i])
            fh.write(json.dumps(row) + "\n")


def write_report(out: Path, summary: dict[str, Any], clusters: np.ndarray, selected: np.ndarray) -> None:
    """report.md: counts, coverage, per-cluster table, plots."""
    cov = summary["coverage"]
    lines = [
        f"# Selection: {summary['method']}",
        "",
        f"- pool: {summary['pool']} rows ({summary['skipped_rows']} skipped), selected: {summary['selected']}",
        f"- coverage: mean nearest-selected cosine {cov['mean_nearest_selected_cosine']:.4f}, "
        f"cluster-histogram KL(pool‖subset) {cov['cluster_kl']:.4f} nats",
        f"- time: {summary['timings_s']}",
        "",
    ]
    if summary["ifd"]:
        lines += [
            f"- IFD: pool mean {summary['ifd']['pool_mean']:.3f}, subset mean {summary['ifd']['selected_mean']:.3f}, "
            f"{summary['ifd']['pool_at_least_max']} pool rows with IFD ≥ max, {summary['ifd']['failures']} "
            f"unscored (IFD 0)",
            "",
            "![IFD histogram](ifd_hist.png)",
            "",
        ]
    lines += [
        "![cluster shares](cluster_counts.png)",
        "",
        "| cluster | pool | selected | share of pool % | share of subset % |",
        "|---|---|---|---|---|",
    ]
    pool_counts = np.bincount(clusters)
    sel_counts = np.bincount(clusters[selected], minlength=len(pool_counts))
    for c, (p, s) in enumerate(zip(pool_counts, sel_counts)):
        lines.append(
            f"| {c} | {p} | {s} | {100 * p / pool_counts.sum():.1f} | {100 * s / max(sel_counts.sum(), 1):.1f} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")


def plot_cluster_counts(path: Path, clusters: np.ndarray, selected: np.ndarray, method: str) -> None:
    """Bar chart: each cluster's share of the pool and of the subset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool = np.bincount(clusters)
    sel = np.bincount(clusters[selected], minlength=len(pool))
    x = np.arange(len(pool))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(x - 0.2, 100 * pool / pool.sum(), width=0.4, label="pool")
    ax.bar(x + 0.2, 100 * sel / max(sel.sum(), 1), width=0.4, label=f"subset ({method})")
    ax.set_xlabel("K-means cluster")
    ax.set_ylabel("share %")
    ax.set_xticks(x)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ifd(path: Path, ifd: np.ndarray, selected: np.ndarray, max_ifd: float) -> None:
    """Histogram of IFD over the pool and the subset, with the max-IFD cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(0, max(1.5, float(np.percentile(ifd, 99.5))), 50)
    ax.hist(np.clip(ifd, 0, bins[-1]), bins=bins, alpha=0.6, label="pool")
    ax.hist(np.clip(ifd[selected], 0, bins[-1]), bins=bins, alpha=0.6, label="subset")
    ax.axvline(max_ifd, color="k", linestyle="--", linewidth=1, label=f"IFD = {max_ifd}")
    ax.set_xlabel("IFD = PPL(a|q) / PPL(a)")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curve(path: Path, curve: list[float]) -> None:
    """The centroid objective over iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, len(curve) + 1), curve)
    ax.set_xlabel("iteration")
    ax.set_ylabel("centroid loss J")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
