"""Read records from local files (jsonl/json/csv/parquet) or the hub, keeping where each row came from.

Every record is a dict plus a `_source` entry such as ``data.jsonl:17`` so that a bad row can be reported
by file and line. Malformed rows are collected in a `BadRows` tally rather than dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llmkit.errors import DataError

LOCAL_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SOURCE_KEY = "_source"


def data_dir() -> Path | None:
    """Where relative data paths resolve: `$LLMKIT_DATA_DIR`, else `../shared/data` when it exists."""
    env = os.environ.get("LLMKIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd() / ".." / "shared" / "data", repo_root / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def resolve_data_path(path: str) -> Path | str:
    """Return a local file Path, or the string unchanged when it names a hub dataset."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    searched = [str(candidate)]
    base = data_dir()
    if base is not None and not candidate.is_absolute():
        in_data_dir = base / path
        if in_data_dir.is_file():
            return in_data_dir
        searched.append(str(in_data_dir))
    looks_local = candidate.suffix in LOCAL_SUFFIXES or path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local:
        where = f" (looked in: {', '.join(searched)})" if len(searched) > 1 else ""
        raise DataError(f"data file not found: {path}{where}")
    return path


@dataclass
class BadRows:
    """A tally of skipped rows: how many, why, and the first few locations."""

    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        """Record one bad row at `where` (file:line) for `reason`."""
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    def summary(self) -> str:
        """One line: count, reasons and first locations."""
        reasons = ", ".join(f"{n}× {r}" for r, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return f"skipped {self.count} bad row(s) ({reasons}); first: {'; '.join(self.examples)}"


class BadRowPolicy:
    """Apply `on_bad_row`: 'error' raises at the first bad row, 'skip' counts it in `tally`."""

    def __init__(self, on_bad_row: str, tally: BadRows):
        self.on_bad_row = on_bad_row
        self.tally = tally

    def __call__(self, where: str, reason: str) -> None:
        if self.on_bad_row == "error":
            raise DataError(f"{where}: {reason} (set data.on_bad_row: skip to skip such rows)")
        self.tally.add(where, reason)


def _refuse_binary(path: Path, kind: str) -> None:
    """Text formats never hold NUL bytes; one in the first 8 KiB means a binary file (gzip, parquet, ...)."""
    with path.open("rb") as fh:
        head = fh.read(8192)
    at = head.find(b"\x00")
    if at >= 0:
        line = head.count(b"\n", 0, at) + 1
        raise DataError(
            f"{path}:{line}: a binary file (NUL byte at offset {at}), not {kind} text; check data.path and data.format"
        )


def _read_text(path: Path, kind: str) -> str:
    """The whole file as text; bytes that are not UTF-8 raise DataError naming file:line (a BOM is dropped)."""
    _refuse_binary(path, kind)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from exc


def _iter_jsonl(path: Path, bad: BadRowPolicy) -> Iterator[dict[str, Any]]:
    _refuse_binary(path, "jsonl")
    with path.open("rb") as fh:  # bytes: a line that is not UTF-8 is one bad row, not a traceback
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad(where, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad(where, f"malformed JSON ({exc.msg})")
                continue
            yield from _tagged_object(row, where, bad)


def _tagged_object(row: Any, where: str, bad: BadRowPolicy) -> Iterator[dict[str, Any]]:
    """Yield `row` tagged with its location if it is a JSON object; report it as bad otherwise."""
    if not isinstance(row, dict):
        bad(where, "row is not a JSON object")
        return
    row[SOURCE_KEY] = where
    yield row


def _iter_json(path: Path, bad: BadRowPolicy) -> Iterator[dict[str, Any]]:
    try:
        data = json.loads(_read_text(path, "json"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
    for i, row in enumerate(data):
        yield from _tagged_object(row, f"{path}[{i}]", bad)


def _csv_header(fields: list[str], path: Path) -> list[str]:
    duplicates = sorted({name for name in fields if fields.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}: the CSV header repeats column(s) {duplicates}")
    return fields


def _iter_csv(path: Path, bad: BadRowPolicy) -> Iterator[dict[str, Any]]:
    """CSV rows as dicts of strings, each tagged with the line its record starts on.

    Python's csv module in strict mode, not pandas: pandas silently moves the first fields of rows that are
    longer than the header into an index, and joins text around a stray quote; here a row whose field count
    differs from the header's is a bad row, and broken quoting is an error naming the line.
    """
    reader = csv.reader(io.StringIO(_read_text(path, "csv"), newline=""), strict=True)
    header: list[str] | None = None
    start = 1  # the line the next record starts on (a quoted field may span lines)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 1 << 30))  # the default (128 KiB) is below some long code answers
    try:
        for fields in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if not fields:  # a blank line
                continue
            if header is None:
                header = _csv_header(fields, path)
            elif len(fields) != len(header):
                bad(where, f"{len(fields)} fields, the header has {len(header)} (check the quoting)")
            else:
                yield {**dict(zip(header, fields)), SOURCE_KEY: where}
    except csv.Error as exc:
        raise DataError(f"{path}:{start}: malformed CSV ({exc}); check the quoting of this record") from exc
    finally:
        csv.field_size_limit(limit)


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not parquet
        raise DataError(
            f"{path}: cannot read it as parquet ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    for i, row in enumerate(frame.to_dict(orient="records")):
        row[SOURCE_KEY] = f"{path}[{i}]"
        yield row


def _iter_hub(name: str, split: str) -> Iterator[dict[str, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear line
        raise DataError(f"cannot load dataset '{name}' (split '{split}') from the hub: {str(exc).splitlines()[0]}")
    for i, row in enumerate(ds):
        row = dict(row)
        row[SOURCE_KEY] = f"{name}[{split}][{i}]"
        yield row


def read_records(
    path: str, split: str = "train", fmt: str = "auto", bad: BadRowPolicy | None = None, max_rows: int | None = None
) -> list[dict[str, Any]]:
    """Read up to `max_rows` records from a local file or hub dataset; malformed rows go to `bad`."""
    bad = bad or BadRowPolicy("error", BadRows())
    resolved = resolve_data_path(path)
    if isinstance(resolved, Path):
        kind = fmt if fmt != "auto" else LOCAL_SUFFIXES.get(resolved.suffix)
        if kind is None:
            raise DataError(
                f"{resolved}: unknown file type; set data.format to one of {sorted(LOCAL_SUFFIXES.values())}"
            )
        rows = {
            "jsonl": lambda: _iter_jsonl(resolved, bad),
            "json": lambda: _iter_json(resolved, bad),
            "csv": lambda: _iter_csv(resolved, bad),
            "parquet": lambda: _iter_parquet(resolved),
        }[kind]()
    else:
        rows = _iter_hub(resolved, split)
    out = []
    for row in rows:
        out.append(row)
        if max_rows is not None and len(out) >= max_rows:
            break
    return out
