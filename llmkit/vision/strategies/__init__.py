"""Query strategies. Contract: `select(pool_idx, budget, *, scorer, ...)` returns indices into the pool."""

from llmkit.vision import VisionError
from llmkit.vision.strategies.base import ModelScorer, QueryResult, QueryStrategy, Scorer
from llmkit.vision.strategies.bual import BUALSampling
from llmkit.vision.strategies.dcfs import DCFSSampling
from llmkit.vision.strategies.e2oal import E2OALSampling
from llmkit.vision.strategies.eaoa import EAOASampling
from llmkit.vision.strategies.fairfal import FairFALSampling
from llmkit.vision.strategies.lewis import LewisOneShot
from llmkit.vision.strategies.lfosa import LfOSASampling
from llmkit.vision.strategies.uncertainty import RandomSampling, UncertaintySampling

STRATEGY_NAMES = ("random", "entropy", "least_confident", "margin", "lfosa", "eaoa", "bual", "e2oal", "dcfs")


def make_strategy(name: str, num_known: int, **kwargs) -> QueryStrategy:
    """Build a strategy by name (one of STRATEGY_NAMES) with its paper defaults."""
    if name == "random":
        return RandomSampling()
    if name in ("entropy", "least_confident", "margin"):
        return UncertaintySampling(name)
    if name == "lfosa":
        return LfOSASampling(num_known, **kwargs)
    if name == "eaoa":
        return EAOASampling(num_known, **kwargs)
    if name == "bual":
        return BUALSampling(num_known, **kwargs)
    if name == "e2oal":
        return E2OALSampling(num_known, **kwargs)
    if name == "dcfs":
        return DCFSSampling(num_known, **kwargs)
    raise VisionError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")


__all__ = [
    "BUALSampling",
    "DCFSSampling",
    "E2OALSampling",
    "EAOASampling",
    "FairFALSampling",
    "LewisOneShot",
    "LfOSASampling",
    "ModelScorer",
    "QueryResult",
    "QueryStrategy",
    "RandomSampling",
    "STRATEGY_NAMES",
    "Scorer",
    "UncertaintySampling",
    "make_strategy",
]
