"""Moved to `llmkit.data.embeddings` (the embedder is generic, not selection's); re-exported for old imports."""

from llmkit.data.embeddings import DEFAULT_EMBEDDER, embed_texts, resolve_embedder

__all__ = ["DEFAULT_EMBEDDER", "embed_texts", "resolve_embedder"]
