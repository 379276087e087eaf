"""llmkit.vision: small torch methods for noisy labels, distillation and (open-set) active learning.

The subpackage is self-contained: torch, numpy, scikit-learn and matplotlib only (no torchvision).
Submodules are imported lazily so `import llmkit.vision` stays cheap and, when torch is missing,
fails with one clear line instead of a deep traceback.

Layout (see llmkit/vision/README.md):
    data.py        digits loader, noise injectors, open-set splits, synthetic shapes for segmentation
    models.py      tiny MLP / CNN / segmentation FCN returning `Outputs(logits, heads, features)`
    losses/        nn.Module losses, each with a pure functional twin (losses.functional)
    strategies/    query strategies: `select(...)` returns indices into the unlabelled pool
    al/            framework-free AL bookkeeping (IndexCollection, State/StateIO, Oracle, StoppingCriteria)
    loops/         thin training loops (active learning, noisy labels, distillation)
    experiments/   one module per CPU check; run.py: `python -m llmkit.vision.run <experiment>`
"""

from __future__ import annotations

import importlib
import importlib.util

from llmkit.errors import LlmkitError


class VisionError(LlmkitError):
    """Bad input to an llmkit.vision function (wrong shape, unknown name, empty pool); one clear line."""


_SUBMODULES = ("data", "models", "losses", "strategies", "loops", "al", "experiments", "run")


def _require_torch() -> None:
    """Raise a one-line error naming the missing dependency when torch is not installed."""
    if importlib.util.find_spec("torch") is None:
        raise VisionError("llmkit.vision needs torch: install it with `pip install torch` (CPU wheel is enough)")


def __getattr__(name: str):
    """Import a submodule on first access (e.g. `llmkit.vision.losses`)."""
    if name in _SUBMODULES:
        if name != "al":  # the AL bookkeeping is pure numpy and works without torch
            _require_torch()
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VisionError", *_SUBMODULES]
