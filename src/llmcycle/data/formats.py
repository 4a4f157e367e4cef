"""Row layouts and their conversion to prompt/completion examples.

Layouts, detected per row from its fields (a template, when given, applies to every row):
- `prompt` + optional `completion`;
- `messages`: a list of `{role, content}`; a final assistant turn is the completion, the turns before it are
  rendered with the tokenizer's chat template as the prompt;
- alpaca: `instruction` + optional `input` + optional `output`;
- any fields, through a template (see `template.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..console import note
from ..errors import UserError
from .io import BadRow, Row, read_rows
from .template import Template, render

ChatRenderer = Callable[[list[dict], bool], str]
"""(messages, add_generation_prompt) -> text; models.chat_renderer builds one from a tokenizer."""

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
CHAT_ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class Example:
    """A prompt and, when the row has one, its reference completion."""

    prompt: str
    completion: str | None
    where: str
    index: int
    """Position among the usable rows of its source, 0-based."""


@dataclass
class LoadedData:
    examples: list[Example]
    skipped: list[BadRow] = field(default_factory=list)
    source: str = ""


class _Unusable(Exception):
    """Raised inside the converters; becomes a BadRow carrying the row's location."""


def load_examples(
    source: str,
    *,
    split: str | None = None,
    template: Template | None = None,
    chat: ChatRenderer | None = None,
    seed: int = 0,
    require_completion: bool = False,
    skip_bad_rows: bool = False,
) -> LoadedData:
    """Read `source` and convert every row; an unusable row is an error unless `skip_bad_rows`."""
    rows, bad = read_rows(source, split)
    examples: list[Example] = []
    for row in rows:
        try:
            prompt, completion = _convert(row, template, chat, seed, len(examples) + len(bad))
            if require_completion and completion is None:
                raise _Unusable("has no completion; training and evaluation rows need one")
        except _Unusable as exc:
            bad.append(BadRow(row.where, str(exc)))
            continue
        examples.append(Example(prompt, completion, row.where, len(examples)))
    if bad and not skip_bad_rows:
        first = min(bad, key=lambda b: _order(b, rows))
        more = f" ({len(bad) - 1} more bad rows; --skip-bad-rows skips them)" if len(bad) > 1 else ""
        raise UserError(first.message() + more)
    if not examples:
        raise UserError(f"{source}: no usable rows ({len(bad)} skipped)")
    if bad:
        note(f"skipped {len(bad)} unusable rows of {len(bad) + len(examples)} in {source} (first: {bad[0].message()})")
    return LoadedData(examples, bad, source)


def _order(bad: BadRow, rows: list[Row]) -> tuple[int, str]:
    # Report the bad row that comes first in the file: locations end in their line/item/row number.
    tail = bad.where.rsplit(" ", 1)[-1]
    return (int(tail) if tail.isdigit() else 0, bad.where)


def _convert(row: Row, template: Template | None, chat: ChatRenderer | None, seed: int, index: int):
    values = row.values
    if template is not None:
        return _from_template(values, template, seed, index)
    if "messages" in values:
        return _from_messages(values["messages"], chat)
    if "prompt" in values:
        return _text(values, "prompt", required=True), _text(values, "completion", required=False)
    if "instruction" in values:
        return _from_alpaca(values)
    fields = ", ".join(sorted(values)) or "none"
    raise _Unusable(
        f"unknown layout (fields: {fields}); expected prompt/completion, messages, "
        "instruction/input/output, or a --template that maps these fields"
    )


def _text(values: dict, name: str, *, required: bool, allow_empty: bool = False) -> str | None:
    if name not in values or values[name] is None:
        if required:
            raise _Unusable(f"field '{name}' is missing")
        return None
    value = values[name]
    if not isinstance(value, str):
        raise _Unusable(f"field '{name}' is not a string (got {type(value).__name__})")
    if not allow_empty and not value.strip():
        raise _Unusable(f"field '{name}' is empty")
    return value


def _from_alpaca(values: dict) -> tuple[str, str | None]:
    instruction = _text(values, "instruction", required=True)
    extra = _text(values, "input", required=False, allow_empty=True)
    pattern = ALPACA_WITH_INPUT if extra and extra.strip() else ALPACA_NO_INPUT
    prompt = pattern.format(instruction=instruction, input=extra or "")
    return prompt, _text(values, "output", required=False)


def _from_messages(messages: object, chat: ChatRenderer | None) -> tuple[str, str | None]:
    if not isinstance(messages, list) or not messages:
        raise _Unusable("field 'messages' must be a non-empty list of {role, content} objects")
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise _Unusable(f"field 'messages' item {number} needs a string 'content'")
        if message.get("role") not in CHAT_ROLES:
            raise _Unusable(f"field 'messages' item {number} has role {message.get('role')!r}; use one of {sorted(CHAT_ROLES)}")
    if chat is None:
        raise UserError("rows with 'messages' need a model whose tokenizer renders them; pass --model")
    if messages[-1]["role"] == "assistant":
        if len(messages) == 1:
            raise _Unusable("field 'messages' holds only an assistant turn; there is no prompt")
        return chat(messages[:-1], True), messages[-1]["content"]
    return chat(messages, True), None


def _from_template(values: dict, template: Template, seed: int, index: int) -> tuple[str, str | None]:
    for name in sorted(template.fields()):
        if name not in values or values[name] is None:
            raise _Unusable(f"field '{name}' (used by template {template.source}) is missing")
        if not isinstance(values[name], (str, int, float)) or isinstance(values[name], bool):
            raise _Unusable(f"field '{name}' is not a string (got {type(values[name]).__name__})")
    prompt = render(template.pick_prompt(index, seed), values)
    if not prompt.strip():
        raise _Unusable("the template gives an empty prompt for this row")
    completion = render(template.completion, values) if template.completion else None
    return prompt, completion
