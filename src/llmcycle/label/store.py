"""The rankings file: one JSON row a submission, each on disk before its labeler hears it was taken.

Nothing acknowledged may be lost, and nothing may be written twice:
- a row is written with one `write` of the whole line on a file opened for appending, then `fsync`ed, and only
  then does `append` return (so the page's 200 means "on disk");
- a crash mid-write can leave only the last line cut short (never acknowledged, since its fsync had not returned):
  on opening, a final line without its newline, or one that is not JSON, is cut off, and its labeler simply ranks
  that item again;
- a row is keyed by (item, labeler): a second submission of the same key (a double click, a retry after a lost
  answer) is recognised and answered with the row already written;
- one lock around the check and the append, so labelers submitting at once each get their own whole line;
- an exclusive `flock` on the file while it is open, so a second `llmcycle label` on the same file is refused
  (the kernel drops the lock when the process dies, even by SIGKILL, so a restart takes it again).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

from ..console import note
from ..errors import UserError

RowKey = tuple[str, str]
"""(item id, labeler name): what makes a submission unique."""


class RankingStore:
    """The rows of one rankings file, read on opening and appended to durably."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[RowKey, dict] = {}
        self.stale: list[dict] = []
        """Rows whose key was seen before (a file merged by hand): kept in the file, counted once."""
        self._lock = threading.Lock()
        self._fd: int | None = None

    # ---- opening ----

    def open(self) -> RankingStore:
        """Create or read the file, cut a torn final line, and take the file's lock."""
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise UserError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.close()
            raise UserError(f"{self.path} is in use by another llmcycle label; stop it or give another --out") from exc
        if created:
            _fsync_folder(self.path.parent)  # the new file's name survives a crash too
        self._read_existing()
        return self

    def _read_existing(self) -> None:
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        good_end = 0
        lines = data.split(b"\n")
        for number, line in enumerate(lines[:-1], start=1):  # the piece after the last newline is torn (or empty)
            row = self._parse(line, number, is_last=number == len(lines) - 1)
            if row is None:
                break
            good_end += len(line) + 1
            if row is not True:
                self._remember(row)
        if good_end < len(data):
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
            note(f"{self.path}: cut a torn final line ({len(data) - good_end} bytes, never acknowledged)")

    def _parse(self, line: bytes, number: int, is_last: bool) -> dict | bool | None:
        """The row on a line; True for a blank line; None for a bad last line (cut); a bad earlier line is an error."""
        if not line.strip():
            return True
        try:
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("item"), str) and isinstance(row.get("labeler"), str):
                return row
            reason = "not a row llmcycle label wrote (it needs 'item' and 'labeler')"
        except ValueError:
            reason = "not valid JSON"
        if is_last:
            return None
        raise UserError(f"{self.path} line {number}: {reason}; give another --out, or fix that line")

    def _remember(self, row: dict) -> None:
        key = (row["item"], row["labeler"])
        if key in self.rows:
            self.stale.append(row)
        else:
            self.rows[key] = row

    # ---- writing ----

    def append(self, row: dict) -> tuple[dict, bool]:
        """Write `row` durably unless its (item, labeler) is there already; returns (the row on disk, whether new)."""
        key = (row["item"], row["labeler"])
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if key in self.rows:
                return self.rows[key], False
            size = os.fstat(self._fd).st_size
            try:
                _write_all(self._fd, line)
                os.fsync(self._fd)
            except OSError:
                os.ftruncate(self._fd, size)  # a full disk: no half line for the next row to be glued to
                raise
            self.rows[key] = row
        return row, True

    def done(self, item: str, labeler: str) -> bool:
        return (item, labeler) in self.rows

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> RankingStore:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    """One write of the whole line; a regular file takes it whole, but a short write is finished."""
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
