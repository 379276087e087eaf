"""Checkpoint folders: atomic publication, discovery of the latest complete one, rotation.

A checkpoint is written into ``.tmp-checkpoint-<step>/``; when every file is on disk, a
``checksums.sha256`` manifest (``sha256sum`` format, so ``sha256sum -c`` checks it too) and then a
``COMPLETE`` marker are written and the folder is renamed to ``checkpoint-<step>/`` (rename is atomic on
one file system). Only folders with the marker are ever loaded, so a write cut short by a crash is never
used, and `verify_checksums` refuses a folder whose files changed, vanished or appeared after the write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llmkit.errors import CheckpointError
from llmkit.io import atomic_write_text, replace_dir

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
CHECKSUMS_FILE = "checksums.sha256"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"
# Files that mean "a trained model is saved here" (the final save of a run, full model or LoRA adapter).
FINAL_MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
TRAINER_STATE_KEYS = ("global_step", "global_batch", "steps_per_epoch")


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each file; threads, because hashlib releases the GIL and checkpoints hold several big files."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, max(len(names), 1))) as pool:
        return dict(zip(names, pool.map(lambda name: _sha256(folder / name), names)))


def checkpoint_files(folder: Path) -> list[str]:
    """Every file under `folder` (relative POSIX paths, sorted) except the manifest and the marker."""
    names = []
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name not in (CHECKSUMS_FILE, COMPLETE_MARKER):
            names.append(name)
    return sorted(names)


def write_checksums(folder: Path) -> None:
    """Write `folder`/checksums.sha256 covering every file in it (all processes' files must be written)."""
    hashes = _hash_files(folder, checkpoint_files(folder))
    atomic_write_text(folder / CHECKSUMS_FILE, "".join(f"{h}  {name}\n" for name, h in hashes.items()))


def _read_manifest(folder: Path) -> dict[str, str]:
    manifest = folder / CHECKSUMS_FILE
    expected: dict[str, str] = {}
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{manifest}: cannot read the checksum manifest ({exc.__class__.__name__})") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name:
            raise CheckpointError(f"{manifest}:{lineno}: malformed line (expected '<sha256>  <file>')")
        expected[name] = digest
    return expected


def _damage(folder: Path, expected: dict[str, str]) -> list[str]:
    """What is wrong with `folder`'s files against the manifest, one phrase per file (empty: intact)."""
    present = set(checkpoint_files(folder))
    problems = [f"{name} is missing" for name in sorted(set(expected) - present)]
    problems += [f"{name} was added after the checkpoint was written" for name in sorted(present - set(expected))]
    listed = sorted(set(expected) & present)
    actual = _hash_files(folder, listed)
    problems += [f"{name} does not match its checksum" for name in listed if actual[name] != expected[name]]
    return problems


def verify_checksums(folder: Path) -> None:
    """Raise CheckpointError naming the first damaged file of `folder` (changed, missing or unexpected).

    A checkpoint written before checksums existed has no manifest: it is loaded with a warning.
    """
    if not (folder / CHECKSUMS_FILE).is_file():
        logger.warning("%s has no %s (written by an older llmkit): loading it unverified", folder, CHECKSUMS_FILE)
        return
    problems = _damage(folder, _read_manifest(folder))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"checkpoint {folder} is damaged: {problems[0]}{more}; delete the folder to resume from an "
            "earlier checkpoint, or start again with --trainer.overwrite_output_dir"
        )


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json; unreadable JSON or a missing key raises CheckpointError naming it."""
    path = folder / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} is missing; the checkpoint cannot be resumed") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.__class__.__name__})") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    for key in TRAINER_STATE_KEYS:
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool):
            raise CheckpointError(f"{path}: key '{key}' is missing or not an integer")
    return state


def final_model_files(output_dir: str | os.PathLike) -> list[str]:
    """Names of the saved-model files directly in `output_dir` (a finished run's model or adapter)."""
    root = Path(output_dir)
    return [name for name in FINAL_MODEL_FILES if (root / name).is_file()]


def publish(tmp_dir: Path, final_dir: Path) -> None:
    """Write the checksum manifest, mark `tmp_dir` complete (fsynced) and rename it to `final_dir`."""
    write_checksums(tmp_dir)
    marker = tmp_dir / COMPLETE_MARKER
    with marker.open("w") as fh:
        fh.write("ok\n")
        fh.flush()
        os.fsync(fh.fileno())
    replace_dir(tmp_dir, final_dir)


def rotate(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints (keep <= 0 keeps all); return the removed ones."""
    found = complete_checkpoints(output_dir)
    if keep <= 0 or len(found) <= keep:
        return []
    removed = [path for _, path in found[:-keep]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
