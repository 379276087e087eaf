"""Code tasks: pull code out of a chat answer and assemble the program the sandbox runs."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)

# The standard stop sequences for HumanEval completion prompts (Codex paper / human-eval).
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


def extract_code(text: str) -> str:
    """The first fenced code block of a chat answer (an unclosed fence runs to the end); else the text."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str, chat: bool) -> str:
    """prompt + completion (or the extracted function) + the tests + check(entry_point).

    For chat answers that restate the whole function, the answer replaces the prompt's stub; the
    prompt's imports are kept (they sit above the signature).
    """
    if chat:
        code = extract_code(completion)
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
            header = prompt.split(f"def {entry_point}")[0]
            body = header + "\n" + code
        else:
            body = prompt + code
    else:
        body = prompt + completion
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"
