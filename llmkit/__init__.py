"""llmkit: train, tune and evaluate LLMs with faithful recipes of published methods."""

__version__ = "0.1.0"
