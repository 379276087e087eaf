"""Helpers the vision experiments share: mean ± std strings, paired deltas, markdown tables, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.stats import mean_std as stats_mean_std


def mean_std(values, digits: int = 1) -> str:
    """'m ± s' with `digits` decimals (sample std, ddof=1; '± 0' for one value)."""
    mean, std = stats_mean_std(values, ddof=1)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_delta(values, baseline) -> str:
    """Mean ± std over seeds of the per-seed difference values − baseline (same seeds, so seed noise cancels)."""
    return mean_std(np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: write files, never open windows
    import matplotlib.pyplot as plt

    return plt


def band(ax, curves, label):
    curves = np.asarray(curves, dtype=np.float64)
    x = np.arange(1, curves.shape[1] + 1)
    mean, std = curves.mean(0), curves.std(0)
    ax.plot(x, mean, label=label)
    ax.fill_between(x, mean - std, mean + std, alpha=0.2)


def bar_plot(results: dict, path: Path, ylabel: str) -> None:
    """Bars of the per-arm mean with std error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(results)
    means = [np.mean(results[n]) for n in names]
    ax.bar(names, means, yerr=[np.std(results[n]) for n in names], capsize=4)
    ax.set_ylabel(ylabel), ax.set_ylim(max(0, min(means) - 15), min(100, max(means) + 5))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)
