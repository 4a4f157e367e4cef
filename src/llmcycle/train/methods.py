"""Fine-tuning methods: which parameters train, set up through peft wherever peft has the method.

    full           every weight trains
    lora           low-rank adapters on chosen linear layers (peft LoRA)
    qlora          the base in 4-bit NF4/FP4 with bitsandbytes, LoRA on top (CUDA only)
    prompt-tuning  trained virtual tokens before the input (peft prompt tuning)
    prefix-tuning  trained key/value prefixes in every layer (peft prefix tuning)
    freeze         selective fine-tuning: `--trainable` names the layers or modules that train

`--lora-targets attention` picks the attention projections of whatever architecture is loaded: every linear
layer inside a module whose name says attention (attn, attention, SelfAttention, EncDecAttention, ...).
"""

from __future__ import annotations

import re

import torch

from ..errors import UserError
from ..models import load_base, locate, pick_device, resolve_dtype, unwrap_peft
from .settings import LoRASettings, Method

ADAPTER_METHODS: tuple[Method, ...] = ("lora", "qlora", "prompt-tuning", "prefix-tuning")
DEFAULT_LR: dict[Method, float] = {"full": 5e-5, "freeze": 5e-5, "lora": 2e-4, "qlora": 2e-4, "prompt-tuning": 3e-2, "prefix-tuning": 1e-2}
ATTENTION_SCOPE = re.compile(r"(attn|attention)", re.IGNORECASE)
LINEAR_TYPES = ("Linear", "Conv1D")  # transformers' GPT-2 keeps its projections in Conv1D


def linear_module_names(model) -> list[str]:
    return [name for name, module in model.named_modules() if type(module).__name__ in LINEAR_TYPES]


def attention_projections(linear_names: list[str]) -> list[str]:
    """The linear layers `--lora-targets attention` adapts: those inside a module whose name says attention.
    One definition for fine-tuning, DPO, PPO and `plan memory`."""
    return [n for n in linear_names if "." in n and ATTENTION_SCOPE.search(n.rsplit(".", 1)[0])]


def attention_target_pattern(model) -> str:
    """A regex (peft full-matches it against module names) for the attention projections of this model."""
    names = attention_projections(linear_module_names(model))
    if not names:
        raise UserError("no attention projections found in this model; give --lora-targets names or all-linear")
    # One alternative per distinct name shape: layer indices become \d+, so the pattern stays short.
    shapes = sorted({r"\.".join(r"\d+" if part.isdigit() else re.escape(part) for part in n.split(".")) for n in names})
    return "(" + "|".join(shapes) + ")"


def lora_targets(model, spec: str):
    """`attention`, `all-linear`, or comma-separated module names (leaf names such as q,v or full names)."""
    if spec == "attention":
        return attention_target_pattern(model)
    if spec == "all-linear":
        return "all-linear"
    names = [part.strip() for part in spec.split(",") if part.strip()]
    linears = linear_module_names(model)
    for name in names:
        if not any(full == name or full.endswith("." + name) for full in linears):
            leaves = sorted({full.rsplit(".", 1)[-1] for full in linears})
            raise UserError(f"--lora-targets: no linear module named '{name}'; this model has: {', '.join(leaves)}")
    return names


def task_type(is_encoder_decoder: bool) -> str:
    return "SEQ_2_SEQ_LM" if is_encoder_decoder else "CAUSAL_LM"


def lora_config(model, is_encoder_decoder: bool, lora: LoRASettings, dropout: float = 0.0):
    """peft's LoraConfig for `model` (fine-tuning, DPO and PPO all build theirs here)."""
    import peft

    return peft.LoraConfig(
        task_type=task_type(is_encoder_decoder), r=lora.lora_rank, lora_alpha=lora.lora_alpha, lora_dropout=dropout,
        target_modules=lora_targets(model, lora.lora_targets),
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()),  # GPT-2 stores weights transposed
    )


def apply_method(model, cfg, is_encoder_decoder: bool, base_name: str):
    """The model to train, with only the method's parameters requiring gradients."""
    import peft

    if cfg.method == "full":
        return model
    if cfg.method == "freeze":
        freeze_except(model, cfg.trainable)
        return model
    kind = task_type(is_encoder_decoder)
    if cfg.method in ("lora", "qlora"):
        config = lora_config(model, is_encoder_decoder, cfg, cfg.lora_dropout)
        if cfg.method == "qlora":
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.method == "prompt-tuning":
        from_text = cfg.prompt_init_text is not None
        config = peft.PromptTuningConfig(
            task_type=kind, num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init="TEXT" if from_text else "RANDOM",
            prompt_tuning_init_text=cfg.prompt_init_text, tokenizer_name_or_path=base_name if from_text else None,
        )
    else:
        config = peft.PrefixTuningConfig(task_type=kind, num_virtual_tokens=cfg.num_virtual_tokens)
    try:
        return peft.get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot apply {cfg.method} to this model: {' '.join(str(exc).split())[:300]}") from exc


def block_lists(model) -> list[torch.nn.ModuleList]:
    """The stacks of repeated transformer blocks (one for decoder-only models, encoder and decoder for seq2seq)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        return []
    # Blocks are the ModuleLists whose children hold most of the parameters.
    def size(module_list):
        return sum(p.numel() for p in module_list.parameters())
    biggest = max(size(m) for m in lists)
    return [m for m in lists if size(m) >= biggest * 0.3 and not any(m is not o and any(m is c for c in o.modules()) for o in lists)]


def freeze_except(model, spec: str | None) -> None:
    """Freeze every parameter, then unfreeze those `--trainable` names.

    `spec` is comma-separated: `last:N` (the last N blocks of each stack), `first:N`, `norm` (every layer
    norm), `embeddings`, `lm_head`, or any other text, matched as a substring of parameter names.
    """
    if not spec:
        raise UserError("--method freeze needs --trainable, for example last:2 or last:1,norm")
    chosen: set[int] = set()
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        matched = _select(model, item)
        if not matched:
            raise UserError(f"--trainable '{item}' matches no parameter of this model")
        chosen |= {id(p) for p in matched}
    for parameter in model.parameters():
        parameter.requires_grad = id(parameter) in chosen


def _select(model, item: str) -> list[torch.nn.Parameter]:
    kind, _, count = item.partition(":")
    if kind in ("last", "first") and count:
        if not count.isdigit() or int(count) < 1:
            raise UserError(f"--trainable '{item}': write {kind}:N with N at least 1")
        blocks = [b for stack in block_lists(model) for b in (stack[-int(count):] if kind == "last" else stack[: int(count)])]
        return [p for block in blocks for p in block.parameters()]
    named = list(model.named_parameters())
    if item == "norm":
        return [p for name, module in model.named_modules() if "norm" in type(module).__name__.lower() or "ln" in name.rsplit(".", 1)[-1] for p in module.parameters(recurse=False)]
    if item == "embeddings":
        return list(model.get_input_embeddings().parameters())
    if item == "lm_head":
        head = model.get_output_embeddings()
        return list(head.parameters()) if head is not None else []
    return [p for name, p in named if item in name]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as the parameters they pack."""
    trainable = total = 0
    for parameter in model.parameters():
        count = getattr(parameter, "ds_numel", parameter.numel())  # DeepSpeed ZeRO-3 leaves an empty shard here
        if type(parameter).__name__ == "Params4bit":
            count *= 2
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total


def load_trainable(spec: str, dtype: str, trust_remote_code: bool, adapter_hint: str, **model_kwargs):
    """The base model a trainer starts from, on the training device: float32 weights under `--dtype auto`
    (autocast brings bfloat16 on a GPU), else the dtype asked for. An adapter run is refused with `adapter_hint`."""
    source = locate(spec)
    if source.adapters:
        raise UserError(f"{spec} is an adapter; merge it first (llmcycle merge) or {adapter_hint}")
    return load_training_base(source.base, dtype, trust_remote_code, **model_kwargs)


def load_training_base(base: str, dtype: str, trust_remote_code: bool, **model_kwargs):
    """A located base model (folder or hub id) on the training device, in the dtype `--dtype` asks for."""
    from pathlib import Path

    base = str(Path(base).resolve()) if Path(base).exists() else base
    device = pick_device()
    torch_dtype = torch.float32 if dtype == "auto" else resolve_dtype(dtype, device)
    loaded = load_base(base, torch_dtype=torch_dtype, trust_remote_code=trust_remote_code, **model_kwargs)
    if "device_map" not in model_kwargs:  # a quantised (QLoRA) model is placed by its device_map
        loaded.model.to(device)
    return loaded


def enable_gradient_checkpointing(model) -> None:
    base = unwrap_peft(model)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()
