"""Data that used to give a traceback or train on wrong rows: binary and non-UTF-8 files, broken CSV quoting,
CSV rows longer than the header, lists and mappings in text columns (issue 21, part 3)."""

from __future__ import annotations

import gzip
import json

import pytest

from llmkit.data import IGNORE_INDEX, DataConfig, load_sft_data
from llmkit.errors import DataError

GOOD = {"prompt": "Add 2 and 3.", "response": "5"}


def write(tmp_path, name, data: bytes | str):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


def answers(data, tokenizer) -> list[str]:
    return [tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX]) for ex in data.train]


# ----- binary and non-UTF-8 files ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv"])
def test_binary_file_is_one_line_naming_it(suffix, tmp_path, tokenizer):
    p = write(tmp_path, f"d.{suffix}", gzip.compress(json.dumps(GOOD).encode() * 50))
    with pytest.raises(DataError, match=rf"{p}:\d+: a binary file \(NUL byte at offset \d+\), not {suffix} text"):
        load_sft_data(DataConfig(path=str(p)), tokenizer)


def test_non_utf8_jsonl_line_is_a_bad_row_with_its_line(tmp_path, tokenizer):
    good = json.dumps(GOOD).encode()
    latin1 = json.dumps({"prompt": "Café?", "response": "oui"}, ensure_ascii=False).encode("latin-1")
    p = write(tmp_path, "d.jsonl", good + b"\n" + latin1 + b"\n" + good + b"\n")
    data = load_sft_data(DataConfig(path=str(p)), tokenizer)
    assert len(data.train) == 2 and data.bad_rows.count == 1
    assert data.bad_rows.examples[0].startswith(f"{p}:2: not UTF-8 text (byte 0xe9")
    with pytest.raises(DataError, match=rf"{p}:2: not UTF-8 text"):
        load_sft_data(DataConfig(path=str(p), on_bad_row="error"), tokenizer)


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_non_utf8_json_and_csv_name_file_and_line(suffix, tmp_path, tokenizer):
    if suffix == "json":
        text = '[\n {"prompt": "a", "response": "b"},\n {"prompt": "Café", "response": "c"}\n]\n'
    else:
        text = "prompt,response\na,b\nCafé,c\n"
    p = write(tmp_path, f"d.{suffix}", text.encode("latin-1"))
    with pytest.raises(DataError, match=rf"{p}:3: not UTF-8 text \(byte 0xe9 at offset \d+\); save the file as UTF-8"):
        load_sft_data(DataConfig(path=str(p)), tokenizer)


# ----- CSV structure ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, line",
    [
        ('"Add 2, 3\nSay hi,hi\n', 2),  # a quote never closed: pandas raised ParserError
        ('Say hi,hi\n"Add" 2,5\n', 3),  # text after a closing quote: pandas silently made it 'Add 2'
    ],
)
def test_broken_csv_quoting_names_the_line(body, line, tmp_path, tokenizer):
    p = write(tmp_path, "d.csv", "prompt,response\n" + body)
    with pytest.raises(DataError, match=rf"{p}:{line}: malformed CSV \(.*\); check the quoting"):
        load_sft_data(DataConfig(path=str(p)), tokenizer)


def test_csv_rows_longer_than_the_header_are_bad_rows(tmp_path, tokenizer):
    # pandas moved the first field of such rows into the index and trained on prompt="5", response="extra"
    p = write(tmp_path, "d.csv", "prompt,response\nAdd 2 and 3.,5,extra\nSay hi,hi,extra\nName a colour,red\n")
    data = load_sft_data(DataConfig(path=str(p)), tokenizer)
    assert answers(data, tokenizer) == ["red<|im_end|>\n"]
    assert data.bad_rows.count == 2
    assert data.bad_rows.examples[0] == f"{p}:2: 3 fields, the header has 2 (check the quoting)"
    with pytest.raises(DataError, match=rf"{p}:2: 3 fields, the header has 2"):
        load_sft_data(DataConfig(path=str(p), on_bad_row="error"), tokenizer)


def test_csv_keeps_text_as_written_and_lines_of_multiline_records(tmp_path, tokenizer):
    text = '\ufeffprompt,response\n"Write\ntwo lines",007\nAdd 1 and 0.10,1.10\n'  # a BOM, as Excel writes
    p = write(tmp_path, "d.csv", text)
    data = load_sft_data(DataConfig(path=str(p)), tokenizer)
    assert answers(data, tokenizer) == ["007<|im_end|>\n", "1.10<|im_end|>\n"]  # pandas made these 7 and 1.1
    assert [ex.source for ex in data.train] == [f"{p}:2", f"{p}:4"]


def test_csv_header_with_a_repeated_column_is_refused(tmp_path, tokenizer):
    p = write(tmp_path, "d.csv", "prompt,response,response\na,b,c\n")
    with pytest.raises(DataError, match=r"the CSV header repeats column\(s\) \['response'\]"):
        load_sft_data(DataConfig(path=str(p)), tokenizer)


# ----- values that are not text -------------------------------------------------------------------------------


def jsonl(tmp_path, name, rows):
    return write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in rows))


def test_lists_and_mappings_in_text_columns_are_bad_rows(tmp_path, tokenizer):
    p = jsonl(
        tmp_path,
        "d.jsonl",
        [{"prompt": ["Add", "2"], "response": "x"}, {"prompt": "q", "response": {"answer": 5}}, GOOD],
    )
    data = load_sft_data(DataConfig(path=str(p)), tokenizer)
    assert answers(data, tokenizer) == ["5<|im_end|>\n"]  # before: "{'answer': 5}" was trained on
    assert data.bad_rows.examples == [
        f"{p}:1: column 'prompt' holds a list, not text",
        f"{p}:2: column 'response' holds a dict, not text",
    ]


def test_joined_columns_and_chat_messages_check_their_parts(tmp_path, tokenizer):
    joined = jsonl(
        tmp_path,
        "j.jsonl",
        [
            {"instruction": "Reverse", "input": ["abc"], "output": "cba"},
            {"instruction": "Reverse", "input": "xy", "output": "yx"},
        ],
    )
    data = load_sft_data(
        DataConfig(path=str(joined), columns={"prompt": ["instruction", "input"], "response": "output"}), tokenizer
    )
    assert answers(data, tokenizer) == ["yx<|im_end|>\n"]
    assert data.bad_rows.examples == [f"{joined}:1: column 'input' holds a list, not text"]
    chat = jsonl(
        tmp_path,
        "c.jsonl",
        [
            {"conv": [{"role": "user", "content": {"text": "hi"}}, {"role": "assistant", "content": "A"}]},
            {"conv": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "B"}]},
        ],
    )
    data = load_sft_data(DataConfig(path=str(chat), columns={"messages": "conv"}), tokenizer)
    assert answers(data, tokenizer) == ["B<|im_end|>\n"]
    assert data.bad_rows.examples == [f"{chat}:1: message 0's content holds a dict, not text"]


def test_parquet_list_and_missing_values(tmp_path, tokenizer):
    import pandas as pd

    p = tmp_path / "d.parquet"
    pd.DataFrame({"prompt": ["a", "b", "c"], "response": ["x", None, "z"], "tags": [["t"], ["u"], ["v"]]}).to_parquet(p)
    data = load_sft_data(DataConfig(path=str(p)), tokenizer)
    assert answers(data, tokenizer) == ["x<|im_end|>\n", "z<|im_end|>\n"]
    assert data.bad_rows.examples == [f"{p}[1]: empty response"]  # a missing value, not the text "None"
    with pytest.raises(DataError, match=rf"{p}\[0\]: column 'tags' holds a ndarray, not text"):
        load_sft_data(
            DataConfig(path=str(p), columns={"prompt": "tags", "response": "response"}, on_bad_row="error"), tokenizer
        )
