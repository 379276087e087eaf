"""The vision CPU checks, one module per experiment, over the shared loops in `llmkit.vision.loops`.

Each module has `NAME` (the command-line name) and `run(seeds, out, args) -> (markdown block, raw results)`:
it trains over the seeds, writes its plot under `out`, and returns a title + table (mean ± std over seeds)
and the raw per-seed numbers. `python -m llmkit.vision.run <experiment>` runs them; the README tables are
written from their output by `benchmarks/vision_tables.py`, never by the library.
"""

from __future__ import annotations

import importlib

# In the order `all` runs them; each module defines NAME and run().
_MODULE_NAMES = (
    "dpc",
    "openset_al",
    "dhkd",
    "l2d",
    "cap",
    "cdcr",
    "ccmn",
    "mogd",
    "lewis",
    "flain",
    "fairfal",
    "rdd",
    "rdd_seg",
    "optimum_shift",
)
_MODULES = tuple(importlib.import_module(f"{__name__}.{name}") for name in _MODULE_NAMES)
RUNNERS = {module.NAME: module.run for module in _MODULES}
EXPERIMENTS = tuple(RUNNERS)

__all__ = ["EXPERIMENTS", "RUNNERS"]
