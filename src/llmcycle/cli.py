"""The `llmcycle` command line: each verb parses its flags and calls one function of the Python API.

A user error prints one line starting `error:` and exits 2, with no traceback unless `--debug` is given
(anywhere on the command line, or LLMCYCLE_DEBUG=1).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings
from pathlib import Path

import click

from .console import err
from .errors import UserError
from .generate.engine import GenerationSettings
from .train.distributed import ReportedError

DTYPE_CHOICES = click.Choice(["auto", "float32", "bfloat16", "float16"])


def model_options(func):
    """--model, --dtype, --trust-remote-code, --adapter NAME=DIR (repeatable), --use NAME."""
    options = [
        click.option("--model", "-m", required=True, help="Model folder (save_pretrained or llmcycle run folder) or hub id."),
        click.option("--dtype", type=DTYPE_CHOICES, default="auto", show_default=True, help="Weights dtype; auto is float32 on CPU, bfloat16 on a GPU."),
        click.option("--trust-remote-code", is_flag=True, help="Allow code shipped with a hub model to run."),
        click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="Load a peft adapter under NAME (repeatable)."),
        click.option("--use", default=None, metavar="NAME", help="Which loaded adapter is active ('base' disables them)."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), func)


def data_options(func):
    options = [
        click.option("--split", default=None, help="Split of a hub dataset (default train)."),
        click.option("--template", default=None, type=click.Path(), help="YAML template mapping fields to prompt/completion."),
        click.option("--skip-bad-rows", is_flag=True, help="Skip unusable rows and report how many, instead of stopping."),
        click.option("--limit", type=int, default=None, help="Use only the first N usable rows."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), func)


def generation_options(func):
    defaults = GenerationSettings()
    options = [
        click.option("--max-new-tokens", type=int, default=defaults.max_new_tokens, show_default=True),
        click.option("--do-sample", is_flag=True, help="Sample instead of greedy decoding."),
        click.option("--temperature", type=float, default=defaults.temperature, show_default=True),
        click.option("--top-k", type=int, default=defaults.top_k, show_default=True),
        click.option("--top-p", type=float, default=defaults.top_p, show_default=True),
        click.option("--num-beams", type=int, default=defaults.num_beams, show_default=True),
        click.option("--repetition-penalty", type=float, default=defaults.repetition_penalty, show_default=True),
        click.option("--seed", type=int, default=defaults.seed, show_default=True),
        click.option("--batch-size", type=int, default=defaults.batch_size, show_default=True),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), func)


def _settings(kwargs: dict) -> GenerationSettings:
    names = GenerationSettings.__dataclass_fields__
    settings = GenerationSettings(**{name: kwargs.pop(name) for name in list(kwargs) if name in names})
    settings.validate()
    return settings


def _model(kwargs: dict):
    from .generate.predict import ModelOptions

    adapters = []
    for spec in kwargs.pop("adapters"):
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {spec!r}: write NAME=DIR")
        adapters.append((name, path))
    return ModelOptions(
        kwargs.pop("model"), kwargs.pop("dtype"), kwargs.pop("trust_remote_code"), adapters, kwargs.pop("use")
    )


def _data(path: str, kwargs: dict, keep: bool = False):
    from .generate.predict import DataOptions

    names = ("split", "template", "skip_bad_rows", "limit")
    values = {name: (kwargs[name] if keep else kwargs.pop(name)) for name in names}
    return DataOptions(path, **values)


def config_options(*classes, skip: tuple[str, ...] = ()):
    """A click option for every field of one or more config dataclasses, with the field's docstring as help.

    Defaults stay in the dataclass: a flag not given is not passed, so `--config FILE` values are not overridden.
    With several classes (align's ppo and dpo), a field only one of them has says so in its help.
    """
    from . import config as configs

    docs: dict[str, dict[str, str]] = {}  # field -> {command: doc}
    types_ = {}
    for cls in classes:
        command = cls.__name__.removesuffix("Config").lower()
        field_docs = configs.field_docs(cls)
        for name, annotation in configs.field_types(cls).items():
            types_.setdefault(name, annotation)
            docs.setdefault(name, {})[command] = field_docs.get(name, "")
    short = {"model": "-m", "data": "-d", "out": "-o"}

    def help_for(name: str) -> str:
        by_command = docs[name]
        if len(classes) > 1 and (len(by_command) < len(classes) or len(set(by_command.values())) > 1):
            return "; ".join(f"{command}: {doc.rstrip('.')}" for command, doc in by_command.items()) + "."
        return next(iter(by_command.values()))

    def decorate(func):
        for name in reversed(list(types_)):
            if name in skip:
                continue
            flag, annotation = "--" + name.replace("_", "-"), types_[name]
            base = next((a for a in getattr(annotation, "__args__", ()) if a is not type(None)), annotation)
            names = [flag, *([short[name]] if name in short else [])]
            if annotation is bool:
                option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_for(name))
            elif getattr(annotation, "__origin__", None) is list:
                option = click.option(*names, name, multiple=True, help=help_for(name))
            else:
                option = click.option(*names, name, type=base if base in (int, float) else str, default=None, help=help_for(name))
            func = option(func)
        return func

    return decorate


def _finetune_config():
    from .train.finetune import FinetuneConfig

    return FinetuneConfig


def _reward_config():
    from .align.reward_model import RewardConfig

    return RewardConfig


def _synthetic_config():
    from .data.synthetic import SyntheticConfig

    return SyntheticConfig


def _pretrain_config():
    from .train.pretrain import PretrainConfig

    return PretrainConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="llmcycle")
def cli():
    """llmcycle: prompt, fine-tune, evaluate, align and deploy a pretrained language model.

    Add --debug to any command to see tracebacks.
    """


@cli.command()
@model_options
@click.option("--prompt", "-p", default=None, help="One prompt: its completion is printed.")
@click.option("--data", "-d", default=None, help="Data file or hub dataset: one prediction per row.")
@data_options
@click.option("--out", "-o", default=None, help="Write predictions (JSONL) here instead of stdout.")
@generation_options
def generate(prompt, data, out, **kwargs):
    """Complete one prompt, or every row of a data file."""
    from .generate.predict import generate_dataset, generate_one
    from .outputs import dump_jsonl

    settings, model = _settings(kwargs), _model(kwargs)
    if (prompt is None) == (data is None):
        raise UserError("give exactly one of --prompt TEXT or --data FILE")
    if prompt is not None:
        if out:
            raise UserError("--out goes with --data; with --prompt the completion is printed")
        click.echo(generate_one(model, prompt, settings))
        return
    records = generate_dataset(model, _data(data, kwargs), settings, out)
    if not out:
        click.echo(dump_jsonl(records))


@cli.command()
@model_options
@click.option("--data", "-d", required=True, help="Queries (test rows).")
@click.option("--shots", "-k", default="0", show_default=True, help="Examples before each query: a count or a list such as 0,1,5.")
@click.option("--shot-data", default=None, help="Solved examples to draw shots from (default: --data, never the row itself).")
@data_options
@click.option("--truncate-shots", is_flag=True, help="Drop shots from prompts that do not fit the context window, instead of failing.")
@click.option("--metrics", multiple=True, default=["rouge"], show_default=True, help="Metrics for the table, when rows have completions.")
@click.option("--metrics-out", default=None, help="Write the metrics per shot count (JSON) here.")
@click.option("--out", "-o", required=True, help="Predictions file; with several counts, NAME.K-shot.jsonl each.")
@generation_options
def prompt(data, shots, shot_data, truncate_shots, metrics, metrics_out, out, **kwargs):
    """In-context learning: zero-, one- and few-shot prompts, compared."""
    from .generate.predict import prompt_dataset

    settings, model = _settings(kwargs), _model(kwargs)
    shot_options = _data(shot_data, kwargs, keep=True) if shot_data else None
    prompt_dataset(
        model, _data(data, kwargs), shots, settings, out, shot_data=shot_options,
        truncate_shots=truncate_shots, metrics=list(metrics), metrics_out=metrics_out,
    )


@cli.command(name="eval")
@click.option("--predictions", "-P", multiple=True, help="Predictions JSONL (repeatable: compared against the first).")
@click.option("--model", "-m", default=None, help="Model to generate with (and for perplexity).")
@click.option("--dtype", type=DTYPE_CHOICES, default="auto", show_default=True)
@click.option("--trust-remote-code", is_flag=True)
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR")
@click.option("--use", default=None, metavar="NAME")
@click.option("--data", "-d", default=None, help="Test data to generate predictions for (with --model).")
@data_options
@click.option("--metrics", multiple=True, default=["rouge"], show_default=True, help="rouge, bleu, exact_match, toxicity, perplexity (comma-separated or repeated).")
@click.option("--bootstrap", "resamples", type=int, default=1000, show_default=True, help="Bootstrap resamples for the 95% intervals.")
@click.option("--save-predictions", default=None, help="With --model: also write the predictions (JSONL) here.")
@click.option("--out", "-o", default=None, help="Write metrics (JSON) here.")
@generation_options
def eval_(predictions, data, metrics, resamples, save_predictions, out, **kwargs):
    """Score predictions (ROUGE, BLEU, exact match, toxicity, perplexity) with bootstrap 95% intervals."""
    from .generate.predict import evaluate

    settings = _settings(kwargs)
    model = _model(kwargs) if kwargs.get("model") else None
    data_opts = _data(data, kwargs) if data else None
    if model is None and (kwargs.get("adapters") or data):
        raise UserError("--data and --adapter need --model")
    if predictions and data:
        raise UserError("give --predictions or --data, not both")
    evaluate(
        predictions=list(predictions), model=model, data=data_opts, settings=settings, metrics=list(metrics),
        out_path=out, save_predictions=save_predictions, resamples=resamples,
    )


def _given_flags(kwargs: dict) -> dict:
    """Flags the user actually gave (not their defaults), so a --config file's values are not overridden."""
    context = click.get_current_context()
    given = {}
    for name, value in kwargs.items():
        source = context.get_parameter_source(name)
        if value is not None and source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given[name] = value
    return given


@cli.command()
@config_options(_finetune_config())
@click.option("--config", "config_file", type=click.Path(), help="YAML config (a saved DIR/config.yaml reproduces its run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Set any config field (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --out.")
def finetune(config_file, overrides, resume, **flags):
    """Instruction fine-tuning: full, LoRA, QLoRA, prompt tuning, prefix tuning or selected layers."""
    from . import config as configs
    from .train.finetune import FinetuneConfig, finetune as run

    run(configs.resolve(FinetuneConfig, config_file=config_file, flags=_given_flags(flags), overrides=overrides), resume=resume)


@cli.command()
@config_options(_reward_config())
@click.option("--config", "config_file", type=click.Path(), help="YAML config (a saved DIR/config.yaml reproduces its run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Set any config field (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --out.")
def reward(config_file, overrides, resume, **flags):
    """Train a scalar reward model from preference pairs or rankings (Bradley-Terry loss)."""
    from . import config as configs
    from .align.reward_model import RewardConfig, train_reward

    train_reward(configs.resolve(RewardConfig, config_file=config_file, flags=_given_flags(flags), overrides=overrides), resume=resume)


def _align_configs():
    from .align.dpo import DPOConfig
    from .align.ppo import PPOConfig

    return PPOConfig, DPOConfig


@cli.command()
@click.option("--method", type=click.Choice(["ppo", "dpo"]), required=True)
@config_options(*_align_configs(), skip=("method",))
@click.option("--config", "config_file", type=click.Path(), help="YAML config (a saved DIR/config.yaml reproduces its run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Set any config field (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --out.")
def align(method, config_file, overrides, resume, **flags):
    """Align with feedback: PPO against a reward with a KL penalty, or DPO on preference pairs."""
    from . import config as configs
    from .align.dpo import dpo
    from .align.ppo import ppo

    cls = dict(zip(("ppo", "dpo"), _align_configs()))[method]
    given = _given_flags(flags)
    for name in given:
        if name not in configs.field_types(cls):
            raise UserError(f"--{name.replace('_', '-')} does not apply to --method {method}")
    run = ppo if method == "ppo" else dpo
    run(configs.resolve(cls, config_file=config_file, flags={**given, "method": method}, overrides=overrides), resume=resume)


@cli.command()
@click.option("--model", "-m", required=True, help="Base model, or an adapter run folder.")
@click.option("--adapter", "adapter_dir", default=None, help="Adapter folder (a run folder or its adapter/).")
@click.option("--out", "-o", required=True, help="Folder for the merged model.")
@click.option("--dtype", type=DTYPE_CHOICES, default="float32", show_default=True)
def merge(model, adapter_dir, out, dtype):
    """Merge a LoRA adapter into its base weights: a plain model folder."""
    from .deploy.merge import merge_adapter

    click.echo(f"wrote merged model to {merge_adapter(model, adapter_dir, out, dtype)}")


@cli.command(name="run")
@click.argument("recipe", type=click.Path())
@click.option("--out", "-o", default=None, help="Run folder (default runs/NAME).")
@click.option("--dry-run", is_flag=True, help="Check the recipe and print its stages; run nothing.")
@click.option("--smoke", is_flag=True, help="Every stage on a few rows for a few steps, to check a recipe end to end.")
@click.option("--model", "-m", default=None, help="Use this model instead of the recipe's.")
@click.option("--data", "-d", "data", multiple=True, metavar="NAME=PATH", help="Replace the recipe's train, test or probe-N data.")
def run_(recipe, out, dry_run, smoke, model, data):
    """Run a recipe: the lifecycle's stages in order, then one report comparing them."""
    from .lifecycle.recipes import run_recipe

    replacements = {}
    for item in data:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise UserError(f"--data {item!r}: write NAME=PATH (train, test or probe-N)")
        replacements[name] = path
    run_recipe(recipe, out, dry_run=dry_run, smoke=smoke, model=model, data=replacements)


@cli.command()
@click.option("--out", "-o", default="quickstart", show_default=True, help="Run folder.")
@click.option("--smoke", is_flag=True, help="A shortened run, to check the installation.")
def quickstart(out, smoke):
    """The whole lifecycle on the embedded model, offline: prompting, fine-tuning, PPO, a report."""
    from .lifecycle.recipes import QUICKSTART, run_recipe

    run_recipe(str(QUICKSTART), out, smoke=smoke)
    click.echo(f"report: {Path(out) / 'report.html'}")


@cli.command()
@config_options(_synthetic_config())
def synth(**flags):
    """Write built-in synthetic data: dialogues with summaries, other instruction tasks, or a text corpus."""
    from . import config as configs
    from .data.synthetic import SyntheticConfig, write_synthetic

    path = write_synthetic(configs.resolve(SyntheticConfig, config_file=None, flags=_given_flags(flags), overrides=()))
    click.echo(f"wrote {path}")


@cli.command()
@config_options(_pretrain_config())
@click.option("--config", "config_file", type=click.Path(), help="YAML config (a saved DIR/config.yaml reproduces its run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --out.")
def pretrain(config_file, overrides, resume, **flags):
    """Pre-train on a text corpus: span corruption (encoder-decoder) or next-token prediction (decoder-only)."""
    from . import config as configs
    from .train.pretrain import PretrainConfig, pretrain as run

    run(configs.resolve(PretrainConfig, config_file=config_file, flags=_given_flags(flags), overrides=overrides), resume=resume)


@cli.command(name="init-model")
@click.option("--arch", type=click.Choice(["t5", "bart", "gpt2", "llama"]), default="gpt2", show_default=True)
@click.option("--corpus", required=True, type=click.Path(), help="Text to train the tokenizer on: .txt (a document a line) or a data file.")
@click.option("--out", "-o", required=True, help="Folder to write the model and tokenizer to.")
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--hidden", type=int, default=64, show_default=True)
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--vocab-size", type=int, default=512, show_default=True)
@click.option("--context", type=int, default=512, show_default=True, help="Context window in tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
def init_model(corpus, out, **spec):
    """Build a randomly initialised model and a tokenizer trained on CORPUS (for trying llmcycle offline)."""
    from .train.scratch import ScratchSpec, corpus_texts, init_model as build

    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{out} exists and is not empty")
    path = build(corpus_texts(corpus), out, ScratchSpec(**spec))
    click.echo(f"wrote a {spec['arch']} model to {path}")


def _add_plan() -> None:
    from .plan.commands import plan

    cli.add_command(plan)


_add_plan()


def _quiet_libraries() -> None:
    """Our own progress bars replace the libraries' per-file ones; their warnings stay visible."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # the libraries' deprecation notices are not for users


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LLMCYCLE_DEBUG") == "1"
    args = [arg for arg in args if arg != "--debug"]
    saved_debug = os.environ.get("LLMCYCLE_DEBUG")
    if debug:
        os.environ["LLMCYCLE_DEBUG"] = "1"  # training processes started by the launcher inherit it
    try:
        _quiet_libraries()
        cli.main(args=args, prog_name="llmcycle", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("error: interrupted")
        sys.exit(130)
    except ReportedError as exc:
        sys.exit(exc.exit_code)  # the training processes printed the error themselves
    except (click.UsageError, UserError) as exc:
        if debug:
            traceback.print_exc()
        message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
        err.print("error: " + " ".join(message.split()), highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    finally:
        if saved_debug is None:
            os.environ.pop("LLMCYCLE_DEBUG", None)


if __name__ == "__main__":
    main()
