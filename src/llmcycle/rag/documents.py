"""Reading the documents a RAG index is built from: text, Markdown, HTML, JSONL and PDF files, or folders of them.

HTML is turned into text with the standard library's `html.parser` (visible text only: no scripts, styles or
tags; block elements end lines), which is all an index needs and adds no dependency. PDF text comes from
`pypdf`. A file or row that yields no text is an error that names it: an empty document in an index is a
mistake, not something to skip silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..data.io import read_rows
from ..errors import UserError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".jsonl", ".pdf"}
BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre", "table"}


@dataclass(frozen=True)
class Document:
    """One document: its id (unique in the index), text, title and where it came from."""

    id: str
    text: str
    title: str
    source: str

    @property
    def digest(self) -> str:
        """What `--update` compares: a document whose text or title changed is embedded again."""
        return hashlib.sha256(json.dumps([self.title, self.text]).encode("utf-8")).hexdigest()


class _HTMLText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1
        self._in_title = tag == "title" or self._in_title
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript", "template"):
            self._skip = max(0, self._skip - 1)
        if tag == "title":
            self._in_title = False
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def html_text(markup: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page; lines are joined, blank runs collapsed."""
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text = "\n".join(line for line in lines if line)
    return " ".join(parser.title.split()), text


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"document {path}: not UTF-8 text (byte {exc.start}); convert it or leave it out") from exc
    except OSError as exc:
        raise UserError(f"document {path} cannot be read: {exc.strerror}") from exc


def _markdown_title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return fallback


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except (PdfReadError, OSError, ValueError) as exc:
        raise UserError(f"document {path}: not a readable PDF ({' '.join(str(exc).split())[:200]})") from exc


def read_file(path: Path, doc_id: str) -> list[Document]:
    """The documents in one file: one for text, Markdown, HTML and PDF; one a line for JSONL."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".pdf":
        text, title = _pdf_text(path), path.stem
    elif suffix in HTML_SUFFIXES:
        title, text = html_text(_read_text(path))
        title = title or path.stem
    elif suffix in TEXT_SUFFIXES:
        text = _read_text(path)
        title = _markdown_title(text, path.stem)
    else:
        raise UserError(f"document {path}: unknown kind '{suffix}'; give {', '.join(sorted(SUFFIXES))} files")
    if not text.strip():
        raise UserError(f"document {path} is empty (no text); remove it or give it text")
    return [Document(doc_id, text, title, str(path))]


def read_jsonl(path: Path) -> list[Document]:
    """One document a line: `id` and `text` (strings, required), optional `title` and `source`. Lines are read as
    every data file is (data.io.read_rows), so the first unreadable line is the error."""
    rows, bad = read_rows(str(path))
    if bad:
        raise UserError(f"document file {bad[0].message()}")
    return [_jsonl_document(row.values, row.where, path) for row in rows]


def _jsonl_document(row: dict, where: str, path: Path) -> Document:
    doc_id, text = row.get("id"), row.get("text")
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise UserError(f"{where}: field 'id' is missing or not a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: field 'text' is missing, empty or not a string (document '{doc_id}')")
    for field in ("title", "source"):
        if row.get(field) is not None and not isinstance(row[field], str):
            raise UserError(f"{where}: field '{field}' is not a string")
    return Document(doc_id, text, row.get("title") or doc_id, row.get("source") or f"{path}#{doc_id}")


def _files(spec: str) -> list[tuple[Path, str]]:
    """(file, document id) for a file, or for every document file under a folder (id: its relative path)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"document {spec} does not exist")
    if path.is_file():
        return [(path, path.name)]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not found:
        raise UserError(f"folder {spec} holds no documents ({', '.join(sorted(SUFFIXES))})")
    return [(p, p.relative_to(path).as_posix()) for p in found]


def read_documents(specs: list[str]) -> list[Document]:
    """Every document in the given files and folders, in order; a document id used twice is an error."""
    if not specs:
        raise UserError("give at least one document file or folder")
    documents: list[Document] = []
    seen: dict[str, str] = {}
    for spec in specs:
        for path, doc_id in _files(spec):
            for document in read_file(path, doc_id):
                if document.id in seen:
                    raise UserError(f"document id '{document.id}' of {document.source} is also used by {seen[document.id]}; ids must be unique")
                seen[document.id] = document.source
                documents.append(document)
    return documents
