"""Flags shared by several verbs: model, data and generation options, and flags generated from typed configs.

Each verb's module in this package turns its flags into the objects below and calls one function.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

import click

from .. import config as configs
from ..errors import UserError
from ..generate.settings import GenerationSettings
from ..train.settings import Dtype

DTYPE_CHOICES = click.Choice(typing.get_args(Dtype))
CONFIG_FILE = click.option("--config", "config_file", type=click.Path(), help="YAML config (a saved DIR/config.yaml reproduces its run).")
OVERRIDES = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Set any config field (repeatable).")
RESUME = click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --out.")


def apply(options: list, func):
    """Decorate `func` with click options in reading order."""
    return functools.reduce(lambda f, option: option(f), reversed(options), func)


def model_options(func):
    """--model, --dtype, --trust-remote-code, --adapter NAME=DIR (repeatable), --use NAME."""
    return _model_flags(click.option("--model", "-m", required=True, help="Model folder (save_pretrained or llmcycle run folder) or hub id."), func)


def optional_model_options(model_help: str):
    """The model flags of a verb that also runs without a model (`eval` of predictions files, `rag eval` of retrieval)."""
    return lambda func: _model_flags(click.option("--model", "-m", default=None, help=model_help), func)


def _model_flags(model_option, func):
    return apply([
        model_option,
        click.option("--dtype", type=DTYPE_CHOICES, default="auto", show_default=True, help="Weights dtype; auto is float32 on CPU, bfloat16 on a GPU."),
        click.option("--trust-remote-code", is_flag=True, help="Allow code shipped with a hub model to run."),
        click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="Load a peft adapter under NAME (repeatable)."),
        click.option("--use", default=None, metavar="NAME", help="Which loaded adapter is active ('base' disables them)."),
    ], func)


def data_options(func):
    return apply([
        click.option("--split", default=None, help="Split of a hub dataset (default train)."),
        click.option("--template", default=None, type=click.Path(), help="YAML template mapping fields to prompt/completion."),
        click.option("--skip-bad-rows", is_flag=True, help="Skip unusable rows and report how many, instead of stopping."),
        click.option("--limit", type=int, default=None, help="Use only the first N usable rows."),
    ], func)


def generation_options(func):
    defaults = GenerationSettings()
    return apply([
        click.option("--max-new-tokens", type=int, default=defaults.max_new_tokens, show_default=True),
        click.option("--do-sample", is_flag=True, help="Sample instead of greedy decoding."),
        click.option("--temperature", type=float, default=defaults.temperature, show_default=True),
        click.option("--top-k", type=int, default=defaults.top_k, show_default=True),
        click.option("--top-p", type=float, default=defaults.top_p, show_default=True),
        click.option("--num-beams", type=int, default=defaults.num_beams, show_default=True),
        click.option("--repetition-penalty", type=float, default=defaults.repetition_penalty, show_default=True),
        click.option("--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size, show_default=True,
                     help="Never repeat an n-gram of this many tokens in one completion (0 = no limit)."),
        click.option("--seed", type=int, default=defaults.seed, show_default=True),
        click.option("--batch-size", type=int, default=defaults.batch_size, show_default=True),
    ], func)


def generation_settings(kwargs: dict) -> GenerationSettings:
    """Pop the generation flags out of `kwargs` into validated settings."""
    names = GenerationSettings.__dataclass_fields__
    settings = GenerationSettings(**{name: kwargs.pop(name) for name in list(kwargs) if name in names})
    settings.validate()
    return settings


def parse_adapters(specs) -> list[tuple[str, str]]:
    """NAME=DIR pairs, in order; a malformed one is a user error naming it."""
    adapters = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {spec!r}: write NAME=DIR")
        adapters.append((name, path))
    return adapters


def model_spec(kwargs: dict):
    """Pop the model flags out of `kwargs` into ModelOptions."""
    from ..models import ModelOptions

    adapters = parse_adapters(kwargs.pop("adapters"))
    return ModelOptions(kwargs.pop("model"), kwargs.pop("dtype"), kwargs.pop("trust_remote_code"), adapters, kwargs.pop("use"))


def data_spec(path: str, kwargs: dict, keep: bool = False):
    """The data flags of `kwargs` (popped unless `keep`) as DataOptions for `path`."""
    from ..data.options import DataOptions

    names = ("split", "template", "skip_bad_rows", "limit")
    values = {name: (kwargs[name] if keep else kwargs.pop(name)) for name in names}
    return DataOptions(path, **values)


def given_flags(kwargs: dict) -> dict:
    """Flags the user actually gave (not their defaults), so a --config file's values are not overridden."""
    context = click.get_current_context()
    given = {}
    for name, value in kwargs.items():
        source = context.get_parameter_source(name)
        if value is not None and source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given[name] = value
    return given


def _field_help(classes, skip) -> tuple[dict, dict]:
    """Field name -> type, and field name -> {command: docstring}, over one or more config classes."""
    docs: dict[str, dict[str, str]] = {}
    types_ = {}
    for cls in classes:
        command = cls.__name__.removesuffix("Config").lower()
        field_docs = configs.field_docs(cls)
        for name, annotation in configs.field_types(cls).items():
            if name not in skip:
                types_.setdefault(name, annotation)
                docs.setdefault(name, {})[command] = field_docs.get(name, "")
    return types_, docs


def _option_for(name: str, annotation, help_text: str):
    """One click option for a config field: a flag pair for bools, repeatable for lists, choices for Literals."""
    short = {"model": "-m", "data": "-d", "out": "-o"}
    flag = "--" + name.replace("_", "-")
    base = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
    if typing.get_origin(annotation) is typing.Literal:
        base = annotation
    names = [flag, *([short[name]] if name in short else [])]
    if annotation is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
        choices = typing.get_args(item) if typing.get_origin(item) is typing.Literal else None
        return click.option(*names, name, multiple=True, type=click.Choice(choices) if choices else None, help=help_text)
    if typing.get_origin(base) is typing.Literal:
        return click.option(*names, name, type=click.Choice([str(a) for a in typing.get_args(base)]), default=None, help=help_text)
    return click.option(*names, name, type=base if base in (int, float) else str, default=None, help=help_text)


def config_options(*classes, skip: tuple[str, ...] = ()):
    """A click option for every field of one or more config dataclasses, with the field's docstring as help.

    Defaults stay in the dataclass: a flag not given is not passed, so `--config FILE` values are not overridden.
    With several classes (align's ppo and dpo), a field only one of them has says so in its help.
    """
    types_, docs = _field_help(classes, skip)

    def help_for(name: str) -> str:
        by_command = docs[name]
        if len(classes) > 1 and (len(by_command) < len(classes) or len(set(by_command.values())) > 1):
            return "; ".join(f"{command}: {doc.rstrip('.')}" for command, doc in by_command.items()) + "."
        return next(iter(by_command.values()))

    def decorate(func):
        for name in reversed(list(types_)):
            func = _option_for(name, types_[name], help_for(name))(func)
        return func

    return decorate


def settings_options(cls, **click_arguments) -> dict:
    """A click option for every field of a settings dataclass, by field name in field order, for a verb that reads
    no --config file (`serve`): the field's docstring is its help and its default is the flag's, shown in --help.

    A bool is a plain switch, a list repeatable, a Literal a choice, and bounds declared with the field
    (`config.at_least`, `above`) a range. `click_arguments[field]` adds to or replaces the click arguments: a
    flag's own spelling (`param_decls`), a metavar, an environment variable.
    """
    docs = configs.field_docs(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    return {name: _settings_option(fields[name], annotation, docs.get(name), click_arguments.get(name, {}))
            for name, annotation in configs.field_types(cls).items()}


def _settings_option(item: dataclasses.Field, annotation, help_text: str | None, extra: dict):
    arguments = {"default": _field_default(item), "show_default": True, "help": help_text}
    if annotation is bool:
        arguments["is_flag"] = True
    elif typing.get_origin(annotation) is list:
        arguments["multiple"] = True
    else:
        arguments["type"] = _click_type(annotation, item.metadata)
    arguments.update(extra)
    flags = arguments.pop("param_decls", ["--" + item.name.replace("_", "-"), *(["-m"] if item.name == "model" else [])])
    return click.option(*flags, item.name, **arguments)


def _field_default(item: dataclasses.Field):
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None if item.default is dataclasses.MISSING else item.default


def _click_type(annotation, bounds: typing.Mapping):
    """click's type for `X` or `X | None` (X a Literal, int, float or str), with the field's bounds as a range."""
    if typing.get_origin(annotation) is not typing.Literal:  # X | None -> X
        annotation = next((arg for arg in typing.get_args(annotation) if arg is not type(None)), annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(choice) for choice in typing.get_args(annotation)])
    if annotation not in (int, float):
        return str
    low, high = bounds.get("min", bounds.get("above")), bounds.get("max", bounds.get("below"))
    if low is None and high is None:
        return annotation
    kind = click.IntRange if annotation is int else click.FloatRange
    return kind(low, high, min_open="above" in bounds, max_open="below" in bounds)


def resolve_config(cls, config_file, overrides, flags: dict, **fixed):
    """The config `cls` from a YAML file, then the flags the user gave, then `--set` overrides."""
    return configs.resolve(cls, config_file=config_file, flags={**given_flags(flags), **fixed}, overrides=overrides)


def training_command(config_classes, skip: tuple[str, ...] = (), **command_settings):
    """A training verb: `click.command` whose flags are every field of the classes `config_classes()` returns,
    then --config FILE, --set KEY=VALUE and --resume, made when first needed (see `ConfigFlagsCommand`)."""
    def flags() -> list[click.Parameter]:
        classes = config_classes()
        classes = classes if isinstance(classes, tuple) else (classes,)
        holder = apply([config_options(*classes, skip=skip), CONFIG_FILE, OVERRIDES, RESUME], lambda: None)
        return holder.__click_params__[::-1]  # click's decorators collect them last first

    return click.command(cls=ConfigFlagsCommand, config_flags=flags, **command_settings)


class ConfigFlagsCommand(click.Command):
    """A command whose config-generated flags are made the first time its parameters are read (to parse, or
    for its --help), after the ones declared on it.

    The training configs live beside their trainers, which import torch: `llmcycle --help` lists the verbs
    without reading their flags, so it imports neither.
    """

    def __init__(self, *args, config_flags, **kwargs):
        self._make_config_flags = config_flags
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._make_config_flags is not None:
            make, self._make_config_flags = self._make_config_flags, None
            self._params.extend(make())
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value
