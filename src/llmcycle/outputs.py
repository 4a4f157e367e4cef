"""Writing outputs so that nothing half-written is ever left behind, and reading back what they take on disk.

Every file llmcycle writes goes to a temporary name in the same folder first and is renamed into place once
complete; a crash or a user error in between leaves no file at the final path. Folders are written the same way:
in a scratch folder beside the target (`staging_beside`), then renamed (`publish`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from .errors import UserError


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """Open `path` for writing text; the file appears at `path` only if the block completes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {path.parent}: {exc.strerror}") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_json(path: str | Path, data: object) -> None:
    """Write pretty-printed JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def check_writable(path: str | Path) -> None:
    """Fail early, before any expensive work, if `path` cannot be written later."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {path}: {parent} is not writable")


def dump_jsonl(records: Iterable[dict]) -> str:
    """JSON lines as one string, for printing."""
    return "\n".join(json.dumps(record, ensure_ascii=False) for record in records)


@contextlib.contextmanager
def staging_beside(target: Path) -> Iterator[Path]:
    """A scratch folder beside `target` (same file system, so a rename moves it), removed afterwards; `publish`
    moves the finished result out."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(folder: Path, target: Path) -> None:
    """Rename a finished folder to `target`, which must be absent or an empty folder (checked by the caller)."""
    if target.exists():
        target.rmdir()
    folder.rename(target)


def folder_bytes(folder: str | Path) -> int:
    """Bytes of every file under `folder` (0 when it is not a folder, such as a hub id)."""
    path = Path(folder)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
