"""Prompt-learning methods: pure building blocks that recipes combine with the shared trainer.

* `retroprompt`: RetroPrompt (retrieval-augmented prompt learning; METHODS.md §7): the knowledge store,
  neural demonstrations, kNN-guided training loss, kNN interpolation at inference, the store refresh
  schedule, and label-position features / label-word scores of a causal LM.
"""
