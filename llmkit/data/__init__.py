"""Data loading, column mapping, chat templating and tokenisation with response-only loss masks."""

from llmkit.data.loading import BadRowPolicy, BadRows, data_dir, read_records, resolve_data_path
from llmkit.data.sft import (
    IGNORE_INDEX,
    DataConfig,
    SFTData,
    TokenizedExample,
    collate,
    load_sft_data,
    to_messages,
    tokenize_messages,
)

__all__ = [
    "BadRowPolicy",
    "BadRows",
    "DataConfig",
    "IGNORE_INDEX",
    "SFTData",
    "TokenizedExample",
    "collate",
    "data_dir",
    "load_sft_data",
    "read_records",
    "resolve_data_path",
    "to_messages",
    "tokenize_messages",
]
