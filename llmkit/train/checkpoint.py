"""Checkpoint folders: atomic publication, discovery of the latest complete one, rotation.

A checkpoint is written into ``.tmp-checkpoint-<step>/``; when every file is on disk a ``COMPLETE``
marker is written and the folder is renamed to ``checkpoint-<step>/`` (rename is atomic on one file
system). Only folders with the marker are ever loaded, so a write cut short by a crash is never used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file, fsync and rename: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to `path` via a temporary file, fsync and rename."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def complete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _CHECKPOINT_RE.match(child.name)
        if m and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def remove_incomplete(output_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary and marker-less checkpoint folders left by a crash; return what was removed."""
    root = Path(output_dir)
    removed = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        stale_tmp = child.name.startswith(TMP_PREFIX)
        unmarked = _CHECKPOINT_RE.match(child.name) and not (child / COMPLETE_MARKER).is_file()
        if child.is_dir() and (stale_tmp or unmarked):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def publish(tmp_dir: Path, final_dir: Path) -> None:
    """Mark `tmp_dir` complete (fsynced) and rename it to `final_dir`."""
    marker = tmp_dir / COMPLETE_MARKER
    with marker.open("w") as fh:
        fh.write("ok\n")
        fh.flush()
        os.fsync(fh.fileno())
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    dir_fd = os.open(final_dir.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rotate(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints (keep <= 0 keeps all); return the removed ones."""
    found = complete_checkpoints(output_dir)
    if keep <= 0 or len(found) <= keep:
        return []
    removed = [path for _, path in found[:-keep]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
