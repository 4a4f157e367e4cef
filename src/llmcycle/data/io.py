"""Reading rows from JSONL, JSON, CSV, Parquet or a Hugging Face dataset id.

We parse JSONL and CSV ourselves rather than through `datasets` because every unusable row must be reported
with its file and line number, and `datasets` either stops at the first bad line without naming it or coerces
mixed types silently. Parquet and hub datasets go through pyarrow and `datasets`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from, for error messages ("data.jsonl line 3")."""

    values: dict
    where: str


@dataclass(frozen=True)
class BadRow:
    """A record that cannot be used, with the reason."""

    where: str
    reason: str

    def message(self) -> str:
        return f"{self.where}: {self.reason}"


def read_rows(source: str, split: str | None = None) -> tuple[list[Row], list[BadRow]]:
    """Read every record of a file or hub dataset; unparseable records come back as `BadRow`s."""
    path = Path(source)
    if path.is_dir():
        raise UserError(f"data {source} is a folder; give a .jsonl, .json, .csv or .parquet file")
    if not path.exists():
        if _looks_like_hub_id(source):
            return _read_hub(source, split), []
        raise UserError(f"data file {source} does not exist")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{source}: unknown data format '{path.suffix}'; use .jsonl, .json, .csv or .parquet")
    _check_not_empty_or_binary(path, kind)
    reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind]
    rows, bad = reader(path)
    if not rows and not bad:
        raise UserError(f"{source}: the file holds no rows")
    return rows, bad


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not source.startswith((".", "~")) and not Path(source).suffix


def _check_not_empty_or_binary(path: Path, kind: str) -> None:
    with path.open("rb") as handle:
        head = handle.read(BINARY_SNIFF_BYTES)
    if not head.strip():
        raise UserError(f"{path}: the file is empty")
    if kind != "parquet" and b"\x00" in head:
        raise UserError(f"{path}: this is a binary file, not {kind.upper()} text")
    if kind != "parquet":
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A multi-byte character cut at the sniff boundary is fine; anything earlier is not text.
            if exc.start < len(head) - 4:
                raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # tolerate the byte-order mark some editors write
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def _read_jsonl(path: Path) -> tuple[list[Row], list[BadRow]]:
    rows, bad = [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(BadRow(where, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(value, dict):
            bad.append(BadRow(where, f"not a JSON object (got {type(value).__name__})"))
            continue
        rows.append(Row(value, where))
    return rows, bad


def _read_json(path: Path) -> tuple[list[Row], list[BadRow]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # the {"data": [...]} layout that `datasets` also accepts
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of objects (or JSONL, one object per line)")
    rows, bad = [], []
    for number, value in enumerate(data, start=1):
        where = f"{path} item {number}"
        if isinstance(value, dict):
            rows.append(Row(value, where))
        else:
            bad.append(BadRow(where, f"not a JSON object (got {type(value).__name__})"))
    return rows, bad


def _read_csv(path: Path) -> tuple[list[Row], list[BadRow]]:
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames or not any(name.strip() for name in reader.fieldnames):
        raise UserError(f"{path}: the CSV has no header line")
    rows, bad = [], []
    for record in reader:
        where = f"{path} line {reader.line_num}"
        if None in record:  # more cells than header fields
            bad.append(BadRow(where, f"{len(reader.fieldnames) + len(record[None])} cells, header has {len(reader.fieldnames)}"))
            continue
        # An empty cell is how CSV says "no value": treat it as a missing field, not an empty string.
        rows.append(Row({key: value for key, value in record.items() if value not in (None, "")}, where))
    return rows, bad


def _read_parquet(path: Path) -> tuple[list[Row], list[BadRow]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    return [Row(record, f"{path} row {number}") for number, record in enumerate(table.to_pylist(), start=1)], []


def _read_hub(name: str, split: str | None) -> list[Row]:
    import datasets  # a declared dependency: its absence is an installation problem, not a missing dataset

    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except (OSError, ValueError) as exc:  # not found, offline, unknown split (connection errors are OSErrors)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"data '{name}' is not a local file and could not be loaded from the hub ({reason})") from exc
    return [Row(dict(record), f"{name}[{split or 'train'}] row {number}") for number, record in enumerate(dataset, start=1)]
