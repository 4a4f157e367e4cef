"""`llmcycle merge`: deployment verbs (quantisation and serving join here)."""

from __future__ import annotations

import click

from .options import DTYPE_CHOICES


@click.command()
@click.option("--model", "-m", required=True, help="Base model, or an adapter run folder.")
@click.option("--adapter", "adapter_dir", default=None, help="Adapter folder (a run folder or its adapter/).")
@click.option("--out", "-o", required=True, help="Folder for the merged model.")
@click.option("--dtype", type=DTYPE_CHOICES, default="float32", show_default=True)
def merge(model, adapter_dir, out, dtype):
    """Merge a LoRA adapter into its base weights: a plain model folder."""
    from ..deploy.merge import merge_adapter

    click.echo(f"wrote merged model to {merge_adapter(model, adapter_dir, out, dtype)}")


COMMANDS = [merge]
