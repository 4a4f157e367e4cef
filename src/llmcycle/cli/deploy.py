"""`llmcycle merge` and `llmcycle quantize` (with `--compare DATA`, every form measured side by side)."""

from __future__ import annotations

import click

from ..console import print_table
from ..errors import UserError
from .options import DTYPE_CHOICES, apply, data_options, data_spec, generation_options, generation_settings, given_flags


@click.command()
@click.option("--model", "-m", required=True, help="Base model, or an adapter run folder.")
@click.option("--adapter", "adapter_dir", default=None, help="Adapter folder (a run folder or its adapter/).")
@click.option("--out", "-o", required=True, help="Folder for the merged model.")
@click.option("--dtype", type=DTYPE_CHOICES, default="float32", show_default=True)
def merge(model, adapter_dir, out, dtype):
    """Merge a LoRA adapter into its base weights: a plain model folder."""
    from ..deploy.merge import merge_adapter

    click.echo(f"wrote merged model to {merge_adapter(model, adapter_dir, out, dtype)}")


METHOD_HELP = ("int8-dynamic (int8 weights and activations), int8-weight, int4-weight (CUDA), nf4 or int8-bnb "
               "(bitsandbytes, CUDA). With --compare: a comma-separated list, or repeated (default: every method this machine runs).")


def compare_options(func):
    return apply([
        click.option("--compare", "compare_data", default=None, metavar="DATA",
                     help="Measure the float32 and bfloat16 model and each --method on this test data: size, load time, "
                          "tokens/s, peak memory, metrics with intervals. OUT gets forms/FORM/, predictions/ and comparison.json."),
        click.option("--metrics", multiple=True, default=["rouge"], show_default=True, help="With --compare: metrics (comma-separated or repeated)."),
        click.option("--bootstrap", "resamples", type=int, default=1000, show_default=True, help="With --compare: bootstrap resamples."),
    ], func)


@click.command()
@click.option("--model", "-m", required=True, help="Model folder, llmcycle run folder (its adapter comes along) or hub id.")
@click.option("--method", "methods", multiple=True, help=METHOD_HELP)
@click.option("--out", "-o", required=True, help="New folder: the quantised model (or, with --compare, every form).")
@click.option("--adapter", "adapter_dir", default=None, help="Adapter folder to quantise with the base.")
@click.option("--merge", is_flag=True, help="Fold the adapter into the weights before quantising (else kept in OUT/adapter/).")
@click.option("--dtype", type=DTYPE_CHOICES, default="auto", show_default=True, help="Dtype of what stays unquantised (torchao int8).")
@click.option("--trust-remote-code", is_flag=True)
@compare_options
@data_options
@generation_options
def quantize(model, methods, out, adapter_dir, merge, dtype, trust_remote_code, compare_data, metrics, resamples, **kwargs):
    """Quantise a model with torchao or bitsandbytes into a folder transformers loads; or compare every form."""
    names = [part.strip() for value in methods for part in value.split(",") if part.strip()]
    if compare_data is None:
        stray = sorted(given_flags({**kwargs, "metrics": metrics, "resamples": resamples}))
        if stray:
            raise UserError(f"--{stray[0].replace('_', '-')} applies only with --compare DATA")
        if len(names) != 1:
            raise UserError("give one --method (int8-dynamic, int8-weight, int4-weight, nf4 or int8-bnb); several only with --compare")
        _quantize_one(model, names[0], out, adapter_dir, merge, dtype, trust_remote_code)
        return
    if adapter_dir or merge or dtype != "auto" or trust_remote_code:
        raise UserError("--compare measures --model as it is (a run folder's adapter is merged); "
                        "--adapter, --merge, --dtype and --trust-remote-code do not apply")
    from ..deploy.compare import compare_quantized

    settings = generation_settings(kwargs)
    compare_quantized(model, data_spec(compare_data, kwargs), settings, list(metrics), out, methods=names or None, resamples=resamples)


def _quantize_one(model, method, out, adapter_dir, merge, dtype, trust_remote_code):
    from ..deploy.quantize import quantize as run

    result = run(model, out, method, adapter=adapter_dir, merge=merge, dtype=dtype, trust_remote_code=trust_remote_code)
    print_table(f"quantised {model}", ["output", "method", "layers quantised", "weights on disk (MiB)", "adapter", "time (s)"],
                [(str(result.out), result.method, result.quantized_layers, f"{result.size_on_disk_bytes / 2**20:,.2f}",
                  result.adapter, f"{result.seconds:.1f}")])


COMMANDS = [merge, quantize]
