"""Data loading, column mapping, response-only masks, bad-row handling."""

from __future__ import annotations

import json

import pytest
from conftest import cpu_limited_run

from llmkit.data import IGNORE_INDEX, DataConfig, collate, load_sft_data, resolve_data_path
from llmkit.errors import DataError


def jsonl(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


GOOD = {"prompt": "Add 2 and 3.", "response": "5"}


def test_response_only_labels_cover_exactly_the_answer(tokenizer, tmp_path):
    data = load_sft_data(DataConfig(path=str(jsonl(tmp_path, [GOOD]))), tokenizer)
    ex = data.train[0]
    targets = [t for t in ex.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(targets) == "5<|im_end|>\n"
    # every label is either ignored or equal to the token at that position
    assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(ex.labels, ex.input_ids))
    context = tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX])
    assert context.endswith("<|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n")


def test_plain_template_and_joined_columns(tokenizer, tmp_path):
    row = {"instruction": "Reverse it", "input": "abc", "output": "cba"}
    cfg = DataConfig(
        path=str(jsonl(tmp_path, [row])),
        columns={"prompt": ["instruction", "input"], "response": "output"},
        template="plain",
        plain_prompt_format="### Q\n{prompt}\n### A\n",
    )
    ex = load_sft_data(cfg, tokenizer).train[0]
    assert tokenizer.decode(ex.input_ids) == "### Q\nReverse it\n\nabc\n### A\ncba" + tokenizer.eos_token
    assert tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX]) == "cba" + tokenizer.eos_token


def test_messages_schema_trains_on_every_assistant_turn(tokenizer, tmp_path):
    row = {
        "conv": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "A2"},
        ]
    }
    cfg = DataConfig(path=str(jsonl(tmp_path, [row])), columns={"messages": "conv"})
    ex = load_sft_data(cfg, tokenizer).train[0]
    assert tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX]) == "A1<|im_end|>\nA2<|im_end|>\n"


def test_malformed_jsonl_line_is_counted_with_file_and_line(tokenizer, tmp_path):
    p = jsonl(tmp_path, [GOOD, "{not json", GOOD, {"prompt": "x", "response": ""}, "[1, 2]"])
    data = load_sft_data(DataConfig(path=str(p)), tokenizer)
    assert len(data.train) == 2
    assert data.bad_rows.count == 3
    assert data.bad_rows.reasons == {
        "malformed JSON (Expecting property name enclosed in double quotes)": 1,
        "row is not a JSON object": 1,
        "empty response": 1,
    }
    assert data.bad_rows.examples[0].startswith(f"{p}:2: malformed JSON")
    assert data.bad_rows.examples[1].startswith(f"{p}:5: row is not a JSON object")
    assert data.bad_rows.examples[2].startswith(f"{p}:4: empty response")  # tokenising comes after reading


def test_on_bad_row_error_stops_at_the_first(tokenizer, tmp_path):
    p = jsonl(tmp_path, [GOOD, "{not json"])
    with pytest.raises(DataError, match=rf"{p}:2: malformed JSON"):
        load_sft_data(DataConfig(path=str(p), on_bad_row="error"), tokenizer)


def test_missing_column_names_it(tokenizer, tmp_path):
    p = jsonl(tmp_path, [{"question": "q", "response": "r"}])
    with pytest.raises(
        DataError, match=r"column 'prompt' \(mapped to 'prompt'\) not found; columns are \['question', 'response'\]"
    ):
        load_sft_data(DataConfig(path=str(p)), tokenizer)


def test_empty_dataset_is_an_error(tokenizer, tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        load_sft_data(DataConfig(path=str(p)), tokenizer)
    p2 = jsonl(tmp_path, [{"prompt": "", "response": "r"}], "allbad.jsonl")
    with pytest.raises(DataError, match=r"is empty: no usable training rows \(1 skipped\)"):
        load_sft_data(DataConfig(path=str(p2)), tokenizer)


def test_missing_file_and_data_dir_resolution(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="data file not found: nope/missing.jsonl \\(looked in: nope/missing.jsonl, "):
        resolve_data_path("nope/missing.jsonl")
    (tmp_path / "sub").mkdir()
    target = jsonl(tmp_path / "sub", [GOOD])
    monkeypatch.setenv("LLMKIT_DATA_DIR", str(tmp_path))
    assert resolve_data_path("sub/d.jsonl") == target
    assert resolve_data_path("org/dataset") == "org/dataset"  # a hub id


def test_csv_and_parquet(tokenizer, tmp_path):
    import pandas as pd

    frame = pd.DataFrame([GOOD, {"prompt": "Say hi", "response": "hi"}])
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    a = load_sft_data(DataConfig(path=str(tmp_path / "d.csv")), tokenizer).train
    b = load_sft_data(DataConfig(path=str(tmp_path / "d.parquet")), tokenizer).train
    assert [e.input_ids for e in a] == [e.input_ids for e in b]
    assert a[1].source == f"{tmp_path / 'd.csv'}:3"


def test_truncation_that_removes_the_answer_skips_the_row(tokenizer, tmp_path):
    long = {"prompt": "word " * 200, "response": "ok"}
    data = load_sft_data(DataConfig(path=str(jsonl(tmp_path, [GOOD, long])), max_length=64), tokenizer)
    assert len(data.train) == 1 and data.bad_rows.count == 1
    assert "no response tokens left after truncation" in data.bad_rows.examples[0]


def test_eval_split_is_disjoint_and_seeded(tokenizer, tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]
    cfg = DataConfig(path=str(jsonl(tmp_path, rows)), eval_fraction=0.25)
    a, b = load_sft_data(cfg, tokenizer), load_sft_data(cfg, tokenizer)
    assert len(a.eval) == 5 and len(a.train) == 15
    assert {e.source for e in a.eval}.isdisjoint({e.source for e in a.train})
    assert [e.source for e in a.eval] == [e.source for e in b.eval]


def test_collate_pads_right_and_masks_padding(code_examples, tokenizer):
    batch = collate(code_examples[:3], tokenizer.pad_token_id)
    lengths = [len(e.input_ids) for e in code_examples[:3]]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_unreachable_hub_dataset_is_one_clear_error():
    import os
    import sys

    code = (
        "from llmkit.data import read_records\n"
        "from llmkit.errors import DataError\n"
        "try:\n    read_records('someorg/no-such-dataset')\n"
        "except DataError as e:\n    print('DATAERROR', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = cpu_limited_run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cpu_s=120)
    assert "DATAERROR cannot load dataset 'someorg/no-such-dataset' (split 'train') from the hub" in proc.stdout
