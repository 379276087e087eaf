"""Atomic file and folder writes: the one implementation behind checkpoints, the evaluation journal, caches and outputs.

A reader (or a run resumed after a crash) sees the old file or the new one, never a torn one: the content goes
to a hidden temporary file in the same folder, is flushed and fsynced, and is then renamed over the target
(`os.replace` is atomic within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator


def temporary_name(path: str | os.PathLike) -> Path:
    """The hidden temporary file `path` is written through: `.<name>.tmp` beside it (same file system)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open `path` for writing ("w" or "wb") so that it appears whole or not at all.

    Streams (a JSON-lines file written row by row, `np.save` into the handle) write to the temporary file;
    on leaving the block it is fsynced and renamed over `path`. On an exception it is removed and `path`
    is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with tmp.open(mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (see the module docstring)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write `data` as JSON (`indent` spaces, or one line with None; str() for other types) atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=str))


def replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Rename the fully written folder `tmp_dir` to `final_dir`, removing an older `final_dir` first.

    The parent folder is fsynced so the rename survives a power cut. Readers that must tell a whole folder
    from a half-removed one look for a completion marker written into `tmp_dir` before this call.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    dir_fd = os.open(final_dir.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
