"""`llmcycle plan memory|compute`: the planners of `llmcycle.plan` from the command line.

Results go to stdout as a table and a one-line verdict, or, with `--json`, as one JSON object and nothing else.
"""

from __future__ import annotations

import json
import typing

import click

from ..console import out, print_table
from ..config import field_docs
from ..errors import UserError
from ..train.settings import LoRASettings, PlannedMethod, PlannedSharding, Precision
from ..plan.memory import (
    MemoryPlan, ModelShape, Optimizer, PlannedLoraTargets, TrainingSetup, find_gpu, human, parse_count, plan_memory,
    shape_from_model, shape_from_size, verdict,
)
from ..plan.compute import plan_compute


_LORA, _LORA_DOCS = LoRASettings(), field_docs(LoRASettings)  # the same LoRA fields as finetune, dpo and ppo


def _choice(choices) -> click.Choice:
    """The values of a Literal type, as a flag's choices."""
    return click.Choice(typing.get_args(choices), case_sensitive=False)


def _gpu_option(func):
    return click.option("--gpu", default=None, metavar="NAME", help="A known GPU: h100, a100-40gb, a100-80gb, h200, l4, t4, a10g, v100, rtx4090, ...")(func)


@click.group()
def plan():
    """Plan before training: memory per GPU, and compute-optimal model and data size."""


@plan.command()
@click.option("--model", "-m", default=None, help="Model folder or llmcycle run folder: sizes read from its config.")
@click.option("--params", default=None, help="Parameter count instead of --model: 7.5e9, 7.5B, 350M, 70k.")
@click.option("--layers", type=int, default=None, help="With --params: transformer layers.")
@click.option("--hidden", type=int, default=None, help="With --params: hidden size.")
@click.option("--heads", type=int, default=None, help="With --params: attention heads (default hidden / 128).")
@click.option("--vocab", type=int, default=None, help="With --params: vocabulary size (default 32000).")
@click.option("--method", type=_choice(PlannedMethod), default="full", show_default=True)
@click.option("--precision", type=_choice(Precision), default="mixed", show_default=True, help="mixed: 16-bit weights and gradients, fp32 master weights.")
@click.option("--optimizer", type=_choice(Optimizer), default="adamw", show_default=True, help="sgd is without momentum.")
@click.option("--gpus", type=int, default=1, show_default=True)
@click.option("--strategy", type=_choice(PlannedSharding), default="ddp", show_default=True, help="How model states are sharded over --gpus.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Sequences per GPU.")
@click.option("--max-length", type=int, default=512, show_default=True, help="Tokens per sequence.")
@click.option("--gradient-checkpointing", is_flag=True, help="Keep only each layer's input; recompute the rest.")
@click.option("--flash-attention", is_flag=True, help="Attention scores are not stored (FlashAttention, SDPA).")
@click.option("--lora-rank", type=int, default=_LORA.lora_rank, show_default=True, help=_LORA_DOCS["lora_rank"])
@click.option("--lora-targets", type=_choice(PlannedLoraTargets), default=_LORA.lora_targets, show_default=True,
              help="attention (every attention projection, as finetune adapts them) or all-linear.")
@click.option("--num-virtual-tokens", type=int, default=20, show_default=True, help="Prompt and prefix tuning.")
@click.option("--no-double-quant", is_flag=True, help="QLoRA without double quantisation of the constants.")
@_gpu_option
@click.option("--gpu-memory", type=float, default=None, help="GPU memory in GB (overrides the named GPU's).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a config class shipped with the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON only.")
def memory(model, params, layers, hidden, heads, vocab, gpu, gpu_memory, trust_remote_code, as_json, no_double_quant, **setup):
    """Memory per GPU for fine-tuning: weights, gradients, optimizer states and activations."""
    setup = TrainingSetup(**{key: value.lower() if isinstance(value, str) else value for key, value in setup.items()},
                          double_quant=not no_double_quant)
    setup.validate()
    shape = _shape(model, params, layers, hidden, heads, vocab, trust_remote_code)
    target = find_gpu(gpu, gpu_memory)
    result = plan_memory(shape, setup)
    command = finetune_command(model, setup, shape)
    if as_json:
        click.echo(json.dumps({**result.to_json(target), "command": command}))
        return
    _print_memory(result, shape.description, target)
    if command:
        out.print(f"to run it: {command}", highlight=False, soft_wrap=True)


# The planner's strategies as `llmcycle finetune` flags: FSDP's full sharding is ZeRO stage 3; ZeRO-1 has no
# flag of its own, so the plan for it runs as ZeRO-2 (which shards gradients too, and so needs less).
STRATEGY_FLAGS = {"ddp": "--strategy ddp", "fsdp": "--strategy fsdp", "zero3": "--strategy fsdp",
                  "zero2": "--deepspeed zero2", "zero1": "--deepspeed zero2"}
PRECISION_FLAGS = {"mixed": "", "fp32": "--dtype float32", "bf16": "--dtype bfloat16", "fp16": "--dtype float16"}


def finetune_command(model: str | None, setup: TrainingSetup, shape: ModelShape) -> str | None:
    """The `llmcycle finetune` command line that trains as planned, or None when llmcycle cannot (no model
    folder, or an optimizer other than AdamW).

    `--lora-targets` means the same in both (train/methods.py's attention_projections), so it carries over.
    """
    if model is None or setup.optimizer != "adamw":
        return None
    parts = ["llmcycle finetune", f"--model {model}", "--data DATA", "--out OUT", f"--method {setup.method}",
             f"--batch-size {setup.batch_size}", f"--max-length {setup.max_length}", PRECISION_FLAGS[setup.precision]]
    if setup.method in ("lora", "qlora"):
        parts += [f"--lora-rank {setup.lora_rank}", f"--lora-targets {setup.lora_targets}"]
    if setup.method in ("prompt-tuning", "prefix-tuning"):
        parts.append(f"--num-virtual-tokens {setup.num_virtual_tokens}")
    if setup.gradient_checkpointing:
        parts.append("--gradient-checkpointing")
    if setup.gpus > 1:
        parts += [f"--num-processes {setup.gpus}", STRATEGY_FLAGS[setup.strategy]]
    return " ".join(part for part in parts if part)


def _shape(model, params, layers, hidden, heads, vocab, trust_remote_code) -> ModelShape:
    if model is None:
        size = parse_count(params, "--params") if params is not None else None
        return shape_from_size(size, layers, hidden, heads, vocab)
    if params is not None or any(value is not None for value in (layers, hidden, heads, vocab)):
        raise UserError("--model reads the sizes from its config; leave out --params, --layers, --hidden, --heads and --vocab")
    return shape_from_model(model, trust_remote_code)


def _print_memory(result: MemoryPlan, description: str, gpu) -> None:
    setup = result.setup
    parallel = f", {setup.gpus} GPUs with {setup.strategy}" if setup.gpus > 1 else ""
    checkpointing = ", gradient checkpointing" if setup.gradient_checkpointing else ""
    rows = [("weights", result.weights_gb), ("gradients", result.gradients_gb), ("optimizer states", result.optimizer_gb),
            ("model states", result.model_states_gb), ("activations", result.activations_gb), ("total per GPU", result.total_gb)]
    print_table("Memory per GPU", ["", "GB", "share"], [(name, f"{gb:.2f}", f"{gb / result.total_gb:.0%}") for name, gb in rows])
    out.print(f"{description}\n{setup.method}, {setup.precision}, {setup.optimizer}{parallel}, batch {setup.batch_size} x "
              f"{setup.max_length} tokens{checkpointing}; trains {human(result.trainable_params)} of "
              f"{human(result.total_params)} parameters ({result.trainable_params / result.total_params:.2%})", highlight=False)
    if gpu is not None:
        out.print(verdict(result, gpu), highlight=False)


@plan.command()
@click.option("--params", default=None, help="Model size: 70B, 1.3e9, ...")
@click.option("--tokens", default=None, help="Training tokens (default: 20 per parameter, Chinchilla).")
@click.option("--flops", default=None, help="A compute budget in FLOPs instead: the compute-optimal model and data.")
@_gpu_option
@click.option("--utilisation", "--utilization", "utilisation", type=float, default=0.4, show_default=True, help="Share of the GPU's peak reached.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON only.")
def compute(params, tokens, flops, gpu, utilisation, as_json):
    """Training FLOPs (6ND), petaflop/s-days, GPU-hours, and the Chinchilla pairing of model and data size."""
    values = {flag: parse_count(text, flag) if text is not None else None
              for flag, text in (("--params", params), ("--tokens", tokens), ("--flops", flops))}
    result = plan_compute(values["--params"], values["--tokens"], values["--flops"], find_gpu(gpu), utilisation)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    rows = [("parameters", human(result.params)), ("tokens", human(result.tokens)),
            ("training FLOPs (6ND)", f"{result.flops:.3g}"), ("petaflop/s-days", f"{result.petaflop_s_days:,.4g}")]
    if result.gpu_hours is not None:
        rows.append((f"GPU-hours on {result.gpu.name} at {result.utilisation:.0%}", f"{result.gpu_hours:,.0f}"))
    if result.chinchilla_params is not None:
        rows.append(("Chinchilla-optimal model for this budget", human(result.chinchilla_params)))
    if result.chinchilla_tokens is not None:
        rows.append(("Chinchilla-optimal tokens (20 a parameter)", human(result.chinchilla_tokens)))
    print_table("Training compute", ["", "value"], rows)


COMMANDS = [plan]
