"""Drop two library warnings that every single-process llmkit run printed and that tell its user nothing.

- DeepSpeed, "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect
  it." accelerate imports DeepSpeed whenever it is installed (`unwrap_model` checks for a DeepSpeed engine),
  even in runs that do not use it, and DeepSpeed then looks for a GPU. It falls back to the CPU only when
  torch sees no GPU, and llmkit, which runs on torch, cannot use one torch does not see either.
- accelerate, "Removed shared tensor {'lm_head.weight'} while saving": the output layer of models with tied
  embeddings (SmolLM2, the tiny test models) is the input embedding; safetensors stores it once and loading
  ties it again. Only that case is dropped: a shared tensor by any other name still warns.

Both are filters on those two loggers for those exact messages, so every other warning still shows.
"""

from __future__ import annotations

import ast
import logging
import re

_DEEPSPEED_LOGGER = "DeepSpeed"
_ACCELERATE_LOGGER = "accelerate.utils.other"
_SHARED_TENSORS = re.compile(r"Removed shared tensor (\{.*?\}) while saving")


def is_known_noise(logger_name: str, message: str) -> bool:
    """Whether a log record (its logger's name and its message) is one of the two warnings above."""
    if logger_name == _DEEPSPEED_LOGGER:
        return message.startswith("Setting accelerator to CPU.")
    if logger_name == _ACCELERATE_LOGGER:
        match = _SHARED_TENSORS.search(message)
        if match is None:
            return False
        try:
            names = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return False
        return bool(names) and all(str(name).split(".")[-2:] == ["lm_head", "weight"] for name in names)
    return False


class _DropKnownNoise(logging.Filter):
    """A logger filter that drops the records `is_known_noise` names."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_known_noise(record.name, record.getMessage())


def silence_known_warnings() -> None:
    """Install the filter on the two loggers (once; later calls do nothing). Call it before DeepSpeed is
    imported: its warning is logged at import time."""
    for name in (_DEEPSPEED_LOGGER, _ACCELERATE_LOGGER):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise())
