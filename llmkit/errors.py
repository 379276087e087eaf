"""Errors that llmkit reports to the user as one clear line, and the wrapper that does so."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar


class LlmkitError(Exception):
    """A user-facing error: bad config, bad data, missing file. Printed as one line, exit code 2."""


class ConfigError(LlmkitError):
    """The configuration (YAML or overrides) is invalid; the message names the key or file."""


class DataError(LlmkitError):
    """The data is missing, malformed or empty; the message names the file, line or column."""


class ModelError(LlmkitError):
    """A model or tokenizer cannot be found or loaded; the message names it."""


class CheckpointError(DataError):
    """A checkpoint folder is damaged (a file changed, missing or unreadable); the message names the file."""


class TrainingError(LlmkitError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step and the last good checkpoint."""


F = TypeVar("F", bound=Callable[..., object])


def exit_on_user_error(fn: F) -> F:
    """Decorate an entry point so an `LlmkitError` prints `error: <message>` and exits with status 2.

    Other exceptions keep their traceback: they are bugs, and a traceback is what a bug report needs.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LlmkitError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
