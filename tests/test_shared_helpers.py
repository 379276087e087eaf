"""The shared helpers of issue 23, by hand: atomic writes (llmkit.io) and summary statistics (llmkit.stats)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmkit.io import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text, replace_dir, temporary_name
from llmkit.stats import mean_std


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_text(path, "old")
    atomic_write_json(path, {"a": 1, "p": tmp_path / "x"})
    assert json.loads(path.read_text()) == {"a": 1, "p": str(tmp_path / "x")}
    assert path.read_text().startswith("{\n  ")  # indent 2
    atomic_write_json(path, [1, 2], indent=None)
    assert path.read_text() == "[1, 2]"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with atomic_open(tmp_path / "v.npy", "wb") as fh:
        np.save(fh, np.arange(3))
    assert np.load(tmp_path / "v.npy").tolist() == [0, 1, 2]
    assert temporary_name(path) == tmp_path / ".out.json.tmp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "out.json", "v.npy"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    atomic_write_text(path, "kept\n")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "kept\n" and not temporary_name(path).exists()
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        with atomic_open(path, "a"):
            pass


def test_replace_dir_swaps_a_folder(tmp_path):
    final, new = tmp_path / "model", tmp_path / ".model-new"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"] and not new.exists()


def test_mean_std_by_hand():
    # [1, 3]: mean 2; population variance ((1-2)² + (3-2)²)/2 = 1; sample variance 2/1 = 2.
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    mean, std = mean_std(np.array([1.0, 3.0]), ddof=1)
    assert mean == 2.0 and std == pytest.approx(2**0.5, abs=0)
    # [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, population std 2 (the textbook example).
    assert mean_std([2, 4, 4, 4, 5, 5, 7, 9]) == (5.0, 2.0)
    assert mean_std([7.5]) == (7.5, 0.0) and mean_std([7.5], ddof=1) == (7.5, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_std([])
