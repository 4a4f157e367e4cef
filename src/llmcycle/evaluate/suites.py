"""Multiple-choice suites: rows of `question`, `choices`, `answer` (+ `subject`, `id`), and MMLU folders.

Three layouts are read:
- a file (JSONL, JSON, CSV, Parquet) or hub dataset of rows; `choices` is a list, `answer` an index, a letter or
  the text of a choice (the hub copy of MMLU, `cais/mmlu`, is such rows: `answer` is an index);
- an MMLU folder as its users have it on disk: `test/SUBJECT_test.csv` (items) and `dev/SUBJECT_dev.csv` (shots),
  headerless CSVs of question, the choices, and the answer letter; `val/` is ignored;
- a folder of the hub copy's files: `test*.parquet|json|jsonl` (items) and `dev*` (shots).

We read CSV folders with the csv module rather than `datasets`, because every bad row must be named with its
file and line, and a suite whose row cannot be scored must fail before any model work.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..data.io import read_rows
from ..errors import UserError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ROW_SUFFIXES = (".parquet", ".json", ".jsonl")


@dataclass(frozen=True)
class Item:
    """One multiple-choice question, its choices and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str
    id: str
    where: str


@dataclass
class Suite:
    """Items to score, and the solved items shots come from (`shots` empty: draw them from the items)."""

    items: list[Item]
    shots: list[Item]
    source: str


def read_suite(source: str, split: str | None = None) -> Suite:
    """Items (and MMLU dev shots) of a suite file, hub dataset or folder; a bad row is a one-line error."""
    path = Path(source)
    if path.is_dir():
        if (path / "test").is_dir():
            return Suite(_read_csv_folder(path / "test"), _read_csv_folder(path / "dev", required=False), source)
        tests, devs = _split_files(path, "test"), _split_files(path, "dev")
        if not tests:
            raise UserError(f"suite folder {source}: expected test/ and dev/ with SUBJECT_test.csv files (MMLU), "
                            "or test*.parquet|json|jsonl files (the hub copy)")
        return Suite([i for f in tests for i in read_item_rows(str(f))], [i for f in devs for i in read_item_rows(str(f))], source)
    return Suite(read_item_rows(source, split), [], source)


def _split_files(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(prefix) and p.suffix in ROW_SUFFIXES)


def read_item_rows(source: str, split: str | None = None) -> list[Item]:
    """Items of a row file or hub dataset; ids default to the row's position."""
    rows, bad = read_rows(source, split)
    if bad:
        raise UserError(bad[0].message())
    items = [_item(row.values, row.where, index) for index, row in enumerate(rows)]
    _check_unique_ids(items)
    return items


def _item(values: dict, where: str, index: int) -> Item:
    question = values.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: field 'question' is missing or not a non-empty string")
    choices = _choices(values.get("choices"), where)
    subject = values.get("subject")
    subject = str(subject) if subject not in (None, "") else "all"
    identifier = values.get("id")
    identifier = str(identifier) if identifier not in (None, "") else str(index)
    return Item(question, choices, parse_answer(values.get("answer"), choices, where), subject, identifier, where)


def _choices(value: object, where: str) -> tuple[str, ...]:
    if hasattr(value, "tolist"):  # a numpy array from Parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise UserError(f"{where}: field 'choices' must be a list of at least 2 choices (got {_describe(value)})")
    for position, choice in enumerate(value):
        if not isinstance(choice, str) or not choice.strip():
            raise UserError(f"{where}: field 'choices' item {position} is not a non-empty string")
    seen: dict[str, int] = {}
    for position, choice in enumerate(value):
        if choice.strip() in seen:
            raise UserError(f"{where}: field 'choices' repeats {choice!r} (items {seen[choice.strip()]} and {position}); choices must differ")
        seen[choice.strip()] = position
    return tuple(value)


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return type(value).__name__


def parse_answer(value: object, choices: tuple[str, ...], where: str) -> int:
    """The index of the right choice from an index, a letter (A = 0) or the choice's own text."""
    if isinstance(value, bool) or value is None:
        raise UserError(f"{where}: field 'answer' is {'missing' if value is None else 'a boolean'}; give an index, a letter or the choice's text")
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value < len(choices):
            raise UserError(f"{where}: field 'answer' {value} is out of range for {len(choices)} choices (0 to {len(choices) - 1})")
        return value
    if not isinstance(value, str):
        raise UserError(f"{where}: field 'answer' must be an index, a letter or a choice's text (got {type(value).__name__})")
    text = value.strip()
    for position, choice in enumerate(choices):
        if choice.strip() == text:
            return position
    if len(text) == 1 and text.upper() in LETTERS[: len(choices)]:
        return LETTERS.index(text.upper())
    if text.isdigit() and int(text) < len(choices):
        return int(text)
    raise UserError(f"{where}: field 'answer' {value!r} matches no choice, and is not a letter A-{LETTERS[len(choices) - 1]} or an index")


def _check_unique_ids(items: list[Item]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise UserError(f"{item.where}: field 'id' {item.id!r} was already used at {seen[item.id]}; ids must be unique")
        seen[item.id] = item.where


def _read_csv_folder(folder: Path, required: bool = True) -> list[Item]:
    """Every `SUBJECT_<split>.csv` in an MMLU split folder, subjects in name order."""
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        if required:
            raise UserError(f"suite folder {folder}: no SUBJECT_{folder.name}.csv files")
        return []
    items = [item for path in files for item in read_mmlu_csv(path, folder.name)]
    _check_unique_ids(items)
    return items


def read_mmlu_csv(path: Path, split: str) -> list[Item]:
    """Headerless rows: question, choice A, choice B, ..., answer letter; the subject is the file's name."""
    subject = path.stem.removesuffix(f"_{split}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    reader = csv.reader(text.splitlines(keepends=True))
    items = []
    for record in reader:
        where = f"{path} line {reader.line_num}"
        if not any(cell.strip() for cell in record):
            continue
        if len(record) < 4:
            raise UserError(f"{where}: {len(record)} cells; expected question, at least 2 choices and the answer letter")
        answer = record[-1].strip().upper()
        if not (len(answer) == 1 and answer in LETTERS[: len(record) - 2]):
            raise UserError(f"{where}: field 'answer' {record[-1]!r} is not a letter A-{LETTERS[len(record) - 3]}")
        values = {"question": record[0], "choices": record[1:-1], "answer": LETTERS.index(answer)}
        items.append(_item({**values, "subject": subject, "id": f"{subject}/{len(items)}"}, where, len(items)))
    return items
