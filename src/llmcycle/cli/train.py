"""`llmcycle finetune`, `pretrain`, `synth` and `init-model`: training verbs and the data and models they start from."""

from __future__ import annotations

import typing
from pathlib import Path

import click

from ..data.synthetic import SyntheticConfig, write_synthetic
from ..errors import UserError
from ..train.settings import Architecture
from .options import config_options, resolve_config, training_command


def _finetune_config():
    from ..train.finetune import FinetuneConfig

    return FinetuneConfig


def _pretrain_config():
    from ..train.pretrain import PretrainConfig

    return PretrainConfig


@training_command(_finetune_config)
def finetune(config_file, overrides, resume, **flags):
    """Instruction fine-tuning: full, LoRA, QLoRA, prompt tuning, prefix tuning or selected layers."""
    from ..train.finetune import finetune as run

    run(resolve_config(_finetune_config(), config_file, overrides, flags), resume=resume)


@training_command(_pretrain_config)
def pretrain(config_file, overrides, resume, **flags):
    """Pre-train on a text corpus: span corruption or text infilling (encoder-decoder), next-token prediction (decoder-only)."""
    from ..train.pretrain import pretrain as run

    run(resolve_config(_pretrain_config(), config_file, overrides, flags), resume=resume)


@click.command()
@config_options(SyntheticConfig)
def synth(**flags):
    """Write built-in synthetic data: dialogues with summaries, other instruction tasks, or a text corpus."""
    click.echo(f"wrote {write_synthetic(resolve_config(SyntheticConfig, None, (), flags))}")


@click.command(name="init-model")
@click.option("--arch", type=click.Choice(typing.get_args(Architecture)), default="gpt2", show_default=True)
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
    from ..train.scratch import ScratchSpec, corpus_texts, init_model as build

    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{out} exists and is not empty")
    path = build(corpus_texts(corpus), out, ScratchSpec(**spec))
    click.echo(f"wrote a {spec['arch']} model to {path}")


COMMANDS = [finetune, pretrain, synth, init_model]
