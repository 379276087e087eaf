"""Framework-free active-learning bookkeeping (pure numpy), with ALiPy's nouns.

A query strategy only has to return a subset of the unlabelled indices; everything else — which
indices are labelled, what the oracle said, what it cost, when to stop, how to resume — lives here.
"""

from llmkit.vision.al.index import IndexCollection
from llmkit.vision.al.oracle import UNKNOWN, Oracle, query_precision
from llmkit.vision.al.state import State, StateIO, Workspace
from llmkit.vision.al.stopping import STOPPING_KINDS, StoppingCriteria

__all__ = [
    "IndexCollection",
    "Oracle",
    "STOPPING_KINDS",
    "State",
    "StateIO",
    "StoppingCriteria",
    "UNKNOWN",
    "Workspace",
    "query_precision",
]
