"""Typed configs: dataclasses whose fields are the flags of a verb, loaded from YAML and `--set key=value`.

YAML is only a config's serialised form. Every field has a type and a one-line docstring; values from a
file or from `--set` are checked against the type, and an unknown or ill-typed field is a one-line error
naming the file and the field. The resolved config is saved beside every artifact and reloads to the same
run. (pydantic would do the type checks too, but would add a dependency for ~80 lines of code.)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

C = TypeVar("C")


def field_types(cls) -> dict[str, Any]:
    """Field name -> type, in reading order: a config's own fields first, then each group it is composed of in
    the order it names them (the distributed settings last), so YAML files and --help start with model and data."""
    hints = typing.get_type_hints(cls)
    order: list[str] = []
    for klass in cls.__mro__:
        order += [name for name in klass.__dict__.get("__annotations__", {}) if name in hints and name not in order]
    return {name: hints[name] for name in order}


def at_least(default, minimum, **bounds):
    """A field whose value (when not None) must be at least `minimum`; checked by `check_fields`."""
    return dataclasses.field(default=default, metadata={"min": minimum, **bounds})


def above(default, bound, **bounds):
    """A field whose value (when not None) must be greater than `bound`."""
    return dataclasses.field(default=default, metadata={"above": bound, **bounds})


_BOUNDS = {
    "min": (lambda value, bound: value >= bound, "at least"),
    "above": (lambda value, bound: value > bound, "above"),
    "below": (lambda value, bound: value < bound, "below"),
    "max": (lambda value, bound: value <= bound, "at most"),
}


def check_fields(config, required: tuple[str, ...] = ()) -> None:
    """Required fields, bounds declared with the fields (at_least, above) and Literal choices, as one-line errors
    naming the flag."""
    for name in required:
        if not getattr(config, name):
            raise UserError(f"--{name.replace('_', '-')} is required")
    hints = field_types(type(config))
    for item in dataclasses.fields(config):
        value, flag = getattr(config, item.name), "--" + item.name.replace("_", "-")
        if value is None:
            continue
        annotation = hints[item.name]
        is_list = typing.get_origin(annotation) is list
        choices = _literal_choices(typing.get_args(annotation)[0] if is_list else annotation)
        for chosen in (value if is_list else [value]):
            if choices and chosen not in choices:
                raise UserError(f"unknown {flag} '{chosen}'; use one of {', '.join(map(str, choices))}")
        for key, bound in item.metadata.items():
            ok, words = _BOUNDS[key]
            if not ok(value, bound):
                raise UserError(f"{flag} must be {words} {bound:g} (got {value})")


def _literal_choices(annotation) -> tuple:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is typing.Literal:
                return typing.get_args(arg)
    return ()


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """`value` as `annotation` (int, float, bool, str, X | None, list[X], Literal[...]), or a UserError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return coerce(value, options[0], where) if len(options) == 1 else value
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [coerce(item, args[0], where) for item in items] if args else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected a whole number, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected text, got {value!r}")
    return value


def from_dict(cls: type[C], values: dict, source: str) -> C:
    """Build `cls` from a mapping; unknown fields and wrong types are errors naming `source` and the field."""
    return cls(**checked(cls, values, source))


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """`["lr=1e-4", "lora_rank=16"]` -> {"lr": 1e-4, "lora_rank": 16}; values are read as YAML scalars."""
    result = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: write KEY=VALUE")
        try:
            result[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            result[key.strip().replace("-", "_")] = raw
    return result


def read_yaml(path: str | Path, what: str = "config", expected: str = "a mapping of field: value") -> dict:
    """A YAML file that holds a mapping ({} when empty); errors name `what` the file is and the path."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path}: expected {expected}")
    return data


def resolve(cls: type[C], *, config_file: str | None, flags: dict, overrides: list[str] | tuple[str, ...]) -> C:
    """File, then flags given on the command line, then `--set`: later ones win."""
    values: dict = {}
    if config_file:
        values.update(checked(cls, read_yaml(config_file), config_file))
    values.update(checked(cls, flags, "flags"))
    values.update(checked(cls, parse_overrides(overrides), "--set"))
    return cls(**values)


def checked(cls, values: dict, source: str) -> dict:
    """`values` coerced to the field types of `cls`; unknown fields and wrong types are errors naming `source`."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise UserError(f"{source}: unknown field '{unknown[0]}'")
    return {name: coerce(value, types_[name], f"{source}: field '{name}'") for name, value in values.items()}


def field_docs(cls) -> dict[str, str]:
    """The one-line docstring written under each field of a config dataclass."""
    import ast
    import inspect
    import textwrap

    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # a subclass's docs win
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs[node.target.id] = str(following.value.value).strip()
    return docs


def to_dict(config) -> dict:
    values = dataclasses.asdict(config)
    return {name: values[name] for name in field_types(type(config)) if name in values}


def dump_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
