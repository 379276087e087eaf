"""Map records to the canonical schema, apply a template, tokenise with response-only loss masks.

Canonical schema: either ``prompt`` + ``response`` (+ optional ``system``) or ``messages`` (a list of
``{"role", "content"}``). `DataConfig.columns` maps these names to the source columns; a list of source
columns is joined with blank lines (e.g. CodeAlpaca's ``[instruction, input]``).

Response-only loss: the text is built as alternating segments (context, target, context, target ...)
and each segment is tokenised on its own, so the label mask has exact boundaries; context tokens get
label -100.
"""

from __future__ import annotations

import logging
import numbers
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from llmkit.data.loading import SOURCE_KEY, BadRowPolicy, BadRows, read_records
from llmkit.errors import DataError

IGNORE_INDEX = -100
CANONICAL_KEYS = ("prompt", "response", "system", "messages")
logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the data is, how its columns map to the canonical schema, and how to tokenise it."""

    path: str = ""
    split: str = "train"
    format: Literal["auto", "jsonl", "json", "csv", "parquet"] = "auto"
    columns: dict[str, str | list[str]] = field(default_factory=lambda: {"prompt": "prompt", "response": "response"})
    template: Literal["chat", "plain"] = "chat"
    plain_prompt_format: str = "{prompt}\n"
    system_prompt: str | None = None
    max_length: int = 1024
    on_bad_row: Literal["skip", "error"] = "skip"
    max_rows: int | None = None
    eval_path: str | None = None
    eval_fraction: float = 0.0
    eval_max_rows: int | None = None
    split_seed: int = 0

    def __post_init__(self):
        unknown = set(self.columns) - set(CANONICAL_KEYS)
        if unknown:
            raise ValueError(f"columns has unknown canonical name(s) {sorted(unknown)}; use {list(CANONICAL_KEYS)}")
        if "messages" not in self.columns and not {"prompt", "response"} <= set(self.columns):
            raise ValueError("columns must map 'prompt' and 'response', or 'messages'")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")


@dataclass
class TokenizedExample:
    """One training example: token ids, labels (-100 where no loss), and where it came from."""

    input_ids: list[int]
    labels: list[int]
    source: str

    @property
    def num_target_tokens(self) -> int:
        """Tokens that contribute to the loss, after the causal shift (the first label never does)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


@dataclass
class SFTData:
    """Tokenised train (and optional eval) examples plus the bad-row tally."""

    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    bad_rows: BadRows


def check_columns(records: list[dict[str, Any]], columns: dict[str, str | list[str]], path: str) -> None:
    """Fail with the missing column's name when a mapped column is absent from every record."""
    present: set[str] = set()
    for row in records:
        present.update(row)
    present.discard(SOURCE_KEY)
    for canonical, source in columns.items():
        for col in [source] if isinstance(source, str) else source:
            if col not in present:
                raise DataError(
                    f"{path}: column '{col}' (mapped to '{canonical}') not found; columns are {sorted(present)}"
                )


def column_value(row: dict[str, Any], source: str | list[str]) -> Any:
    """A record's value for a mapped column; a list of columns is joined with blank lines (None if all absent)."""
    if isinstance(source, str):
        return row.get(source)
    parts = [row.get(col) for col in source]
    if all(p is None for p in parts):
        return None
    return "\n\n".join(str(p) for p in parts if p not in (None, ""))


def as_text(value: Any, what: str) -> str | None:
    """`value` as training text: a string as is, a number as written, None or NaN (a missing value) as None.

    A list or mapping raises ValueError naming `what`: its Python repr would otherwise be trained on.
    """
    if value is None or (isinstance(value, numbers.Number) and value != value):  # NaN != NaN
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Number):
        return str(value)
    raise ValueError(f"{what} holds a {type(value).__name__}, not text")


def column_text(row: dict[str, Any], source: str | list[str]) -> str | None:
    """A record's text for a mapped column (a list of columns joined with blank lines); None if all absent.

    Unlike `column_value`, a value that is not text (a list, a mapping) raises ValueError naming its column.
    """
    parts = [as_text(row.get(col), f"column '{col}'") for col in ([source] if isinstance(source, str) else source)]
    if all(p is None for p in parts):
        return None
    return "\n\n".join(p for p in parts if p)


def _chat_messages(messages: Any) -> list[dict[str, str]]:
    """Validate a `messages` value: a non-empty list of {"role", "content"} with text, one assistant turn or more."""
    if not isinstance(messages, (list, str, dict)) and hasattr(messages, "tolist"):
        messages = messages.tolist()  # parquet gives a numpy array for a list column
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' is not a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError("a message lacks 'role' or 'content'")
        role, content = as_text(m["role"], f"message {i}'s role"), as_text(m["content"], f"message {i}'s content")
        out.append({"role": role or "", "content": content or ""})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant message to train on")
    return out


def to_messages(row: dict[str, Any], cfg: DataConfig) -> list[dict[str, str]]:
    """Canonical chat messages for one record; raises ValueError with the reason for a bad row."""
    if "messages" in cfg.columns:
        return _chat_messages(column_value(row, cfg.columns["messages"]))
    prompt = column_text(row, cfg.columns["prompt"])
    response = column_text(row, cfg.columns["response"])
    if prompt is None or prompt.strip() == "":
        raise ValueError("empty prompt")
    if response is None or response.strip() == "":
        raise ValueError("empty response")
    messages = []
    system = column_text(row, cfg.columns["system"]) if "system" in cfg.columns else cfg.system_prompt
    if system:
        messages.append({"role": "system", "content": str(system)})
    messages += [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": str(response)}]
    return messages


def segments(
    messages: list[dict[str, str]], tokenizer, template: str, plain_prompt_format: str
) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_target) pieces; targets are the assistant turns."""
    if template == "plain":
        context = plain_prompt_format.format(
            prompt="\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
        )
        answer = "".join(m["content"] for m in messages if m["role"] == "assistant")
        return [(context, False), (answer + (tokenizer.eos_token or ""), True)]
    if tokenizer.chat_template is None:
        raise DataError("the tokenizer has no chat template; set data.template: plain")
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not before.startswith(done) or not after.startswith(before):
            raise DataError("the chat template is not prefix-stable; set data.template: plain")
        pieces += [(before[len(done) :], False), (after[len(before) :], True)]
        done = after
    return pieces


def tokenize_messages(messages, tokenizer, cfg: DataConfig) -> tuple[list[int], list[int]]:
    """Token ids and labels (context = -100), truncated to `cfg.max_length`."""
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_target in segments(messages, tokenizer, cfg.template, cfg.plain_prompt_format):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if is_target else [IGNORE_INDEX] * len(ids)
    return input_ids[: cfg.max_length], labels[: cfg.max_length]


def tokenize_records(records, tokenizer, cfg: DataConfig, bad: BadRowPolicy) -> list[TokenizedExample]:
    """Tokenise records; rows with missing fields or no target tokens left are reported to `bad`."""
    out = []
    for row in records:
        where = row.get(SOURCE_KEY, "?")
        try:
            messages = to_messages(row, cfg)
        except ValueError as exc:
            bad(where, str(exc))
            continue
        input_ids, labels = tokenize_messages(messages, tokenizer, cfg)
        example = TokenizedExample(input_ids, labels, where)
        if example.num_target_tokens == 0:
            bad(where, f"no response tokens left after truncation to max_length={cfg.max_length}")
            continue
        out.append(example)
    return out


def _load_split(path: str, cfg: DataConfig, tokenizer, bad: BadRowPolicy, max_rows: int | None):
    records = read_records(path, cfg.split, cfg.format, bad, max_rows)
    if records:
        check_columns(records, cfg.columns, path)
    return tokenize_records(records, tokenizer, cfg, bad)


def load_sft_data(cfg: DataConfig, tokenizer) -> SFTData:
    """Load, map, template and tokenise the train (and eval) data; report skipped rows; empty is an error."""
    if not cfg.path:
        raise DataError("data.path is not set (a local jsonl/json/csv/parquet file or a hub dataset id)")
    tally = BadRows()
    bad = BadRowPolicy(cfg.on_bad_row, tally)
    train = _load_split(cfg.path, cfg, tokenizer, bad, cfg.max_rows)
    eval_examples: list[TokenizedExample] = []
    if cfg.eval_path:
        eval_examples = _load_split(cfg.eval_path, cfg, tokenizer, bad, cfg.eval_max_rows)
    elif cfg.eval_fraction > 0 and train:
        order = list(range(len(train)))
        random.Random(cfg.split_seed).shuffle(order)
        n_eval = max(1, int(round(cfg.eval_fraction * len(train))))
        held = set(order[:n_eval])
        eval_examples = [ex for i, ex in enumerate(train) if i in held][: cfg.eval_max_rows]
        train = [ex for i, ex in enumerate(train) if i not in held]
    if tally.count:
        logger.warning("%s: %s", cfg.path, tally.summary())
    if not train:
        raise DataError(f"dataset {cfg.path} is empty: no usable training rows ({tally.count} skipped)")
    return SFTData(train=train, eval=eval_examples, bad_rows=tally)


def collate(examples: list[TokenizedExample], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch: input_ids, attention_mask, labels (-100 on padding)."""
    from llmkit.data.padding import pad_right  # torch is imported only where batches are made

    return pad_right([ex.input_ids for ex in examples], pad_token_id, [ex.labels for ex in examples])
