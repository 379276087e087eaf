"""The shared accelerate trainer, its config, losses, batching and checkpoint helpers."""

from llmkit.train.trainer import Trainer, TrainerConfig, build_accelerator

__all__ = ["Trainer", "TrainerConfig", "build_accelerator"]
