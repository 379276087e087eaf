"""Reinforcement learning: GRPO building blocks (`core_algos`) and CEEH's difficulty-aware pieces (`ceeh`)."""
