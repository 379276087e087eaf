"""Answer extraction shared by the harness and the RL rewards (GSM8K numbers)."""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"
_FINAL_PATTERNS = [
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}"),
    re.compile(r"answer is[:\s]*\**\s*(" + _NUMBER + ")", re.IGNORECASE),
]


def normalize_number(text: str) -> str | None:
    """'$1,234.50' → '1234.5'; '7.0' → '7'; not a number → None."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return format(float(value), "g")


def gsm8k_gold(answer: str) -> str:
    """The gold number of a GSM8K answer (the text after '####')."""
    if "####" not in answer:
        raise ValueError("GSM8K answer has no '####' line")
    number = normalize_number(answer.split("####")[-1].strip())
    if number is None:
        raise ValueError(f"GSM8K gold answer is not a number: {answer.split('####')[-1]!r}")
    return number


def extract_final_number(text: str) -> str | None:
    """The model's final number: '#### N', '\\boxed{N}' or 'the answer is N' (last match), else the last number."""
    for pattern in _FINAL_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    numbers = re.findall(_NUMBER, text)
    return normalize_number(numbers[-1]) if numbers else None


def gsm8k_correct(completion: str, gold: str) -> bool:
    """Exact match of the extracted number with the normalised gold number."""
    predicted = extract_final_number(completion)
    return predicted is not None and predicted == normalize_number(gold)
