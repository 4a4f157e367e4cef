"""Planning before training: memory per GPU for a fine-tuning method (compute.py: what a pre-training run costs).

Memory follows the published arithmetic, so every figure can be checked by hand:

* Model states (ZeRO paper, Rajbhandari et al. 2020, section 3.1). Bytes per parameter by `--precision`:
  - `fp32`: weights 4, gradients 4, Adam 8 (momentum and variance in fp32): 16.
  - `mixed`: weights 2, gradients 2, Adam 12 (fp32 master weights, momentum, variance): 16, the paper's
    "16 bytes a parameter". PyTorch autocast keeps fp32 weights and gradients instead (4 + 4 + 8): the same 16,
    split differently.
  - `bf16`/`fp16` ("pure" half precision, no master copy): weights 2, gradients 2, Adam 4 (both states in half).
  `--optimizer adamw8bit` holds 2 bytes of state a trainable parameter (bitsandbytes' 8-bit momentum and
  variance; its block-wise constants, 4 bytes per 2048 values, are left out), `sgd` none: it is plain SGD without
  momentum, as `torch.optim.SGD` defaults to. In `mixed` precision either still adds the 4-byte fp32 master copy.
* Sharding over `--gpus G`: ZeRO stage 1 divides the optimizer states by G, stage 2 also the gradients, stage 3
  and FSDP (full shard) also the weights; DDP divides nothing. This reproduces the paper's Figure 1: 7.5B
  parameters on 64 GPUs hold 120, 31.4, 16.6 and 1.9 GB. The layer that ZeRO-3/FSDP gathers while it computes
  is left out.
* Parameter-efficient methods keep gradients and optimizer states only for the trained parameters; the frozen
  base is held in the precision's weight dtype (4 bytes in fp32, otherwise 2). Trained parameters are counted
  the way peft creates them: LoRA adds rank * (in + out) per targeted linear layer (`attention`: every attention
  projection, as `llmcycle finetune` adapts them; `all-linear`: every linear but the head); prompt tuning adds
  num_virtual_tokens * hidden (twice for encoder-decoder models, one prompt per stack); prefix tuning adds
  num_virtual_tokens * layers * 2 * hidden (a key and a value per layer; grouped-query models use the key/value
  width). QLoRA stores the linear layers' weights in NF4: 4 bits a parameter plus the quantisation constants,
  one per block of 64 (8 bits with double quantisation, which adds one fp32 per 256 blocks: 0.127 bits a
  parameter; 32 bits without). Embeddings, norms, biases and the output head stay in the weight dtype.
* Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1):
  s*b*h*(34 + 5*a*s/h) bytes a layer for 16-bit activations, where 2*s*b*h + a*s*s*b of that are 1-byte dropout
  masks; in fp32 the rest doubles. `--flash-attention` drops the a*s*s terms (scores are recomputed, not
  stored). PyTorch keeps a linear layer's input only to compute that layer's weight gradient, so with a frozen
  base the inputs of the linears nothing adapts are not kept: the attention output projection's and both MLP
  layers' (12*s*b*h in 16 bits), and for prompt and prefix tuning the query/key/value input too (2*s*b*h); LoRA
  on all linear layers keeps them all. Memory peaks as backward starts, with three (batch, seq, vocab) fp32
  buffers beside the layers' tensors: the log-softmax the cross-entropy loss keeps and the gradients of the
  log-softmax and of the logits, b*s*vocab*12 bytes (a caller that holds `outputs.logits` adds 2 or 4 bytes a
  value). Full gradient checkpointing keeps only each layer's input (2*s*b*h in 16 bits); a layer recomputed
  later in backward needs its full activations, but by then the logits' buffers are freed, so the larger of the
  two counts. bench/plan_memory.py measures these terms on a CPU. The formula assumes a GPT-style
  block (MLP width 4h, fused GeLU); for `--model`, an activation written in Python (GPT-2's and T5's `gelu_new`)
  adds the extra MLP-wide tensors autograd keeps of it. Encoder-decoder models count encoder and decoder layers
  alike. The batch size is per GPU: data parallelism does not divide activations.

Architecture without `--model`: given `--params N` alone, the shape is derived with hidden = 128 * layers (the
aspect ratio of GPT-3 6.7B/175B and Llama 7B), 128-wide heads and a 32000-token vocabulary, choosing the layer
count whose 12*L*h^2 + vocab*h comes closest to N; N itself is used for the parameter count. With only one of
`--layers`/`--hidden` the other is solved from 12*L*h^2 + vocab*h = N.

The compute planner is in compute.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from ..config import check_fields
from ..errors import UserError
from ..quantization import INT4_GROUP
from ..train.settings import PlannedMethod, PlannedSharding, Precision

GB = 1e9  # decimal gigabytes, as the ZeRO paper and GPU data sheets use
PETAFLOP_S_DAY = 1e15 * 86400  # 8.64e19 FLOPs
TOKENS_PER_PARAM = 20  # Chinchilla
Optimizer = Literal["adamw", "adamw8bit", "sgd"]
PlannedLoraTargets = Literal["attention", "all-linear"]
"""The `--lora-targets` the planner counts (training also takes module names, which need the model itself)."""
DEFAULT_VOCAB = 32000
NF4_BITS = 4
QUANT_BLOCK = 64  # values per NF4 block, each with one absmax constant
DOUBLE_QUANT_BLOCK = 256  # absmax constants per fp32 constant under double quantisation


@dataclass(frozen=True)
class Gpu:
    """An accelerator: its memory (decimal GB) and peak dense bf16 tensor throughput (fp16 on T4 and V100)."""

    name: str
    memory_gb: float
    peak_tflops: float | None = None


_A100_40, _A100_80 = Gpu("A100 40GB", 40, 312), Gpu("A100 80GB", 80, 312)
_H100, _V100_16, _V100_32 = Gpu("H100", 80, 989), Gpu("V100 16GB", 16, 125), Gpu("V100 32GB", 32, 125)
GPUS = {
    "a10040gb": _A100_40, "a10080gb": _A100_80, "a100": _A100_80,
    "h100": _H100, "h100sxm": _H100, "h100pcie": Gpu("H100 PCIe", 80, 756), "h200": Gpu("H200", 141, 989),
    "l4": Gpu("L4", 24, 121), "t4": Gpu("T4", 16, 65), "a10g": Gpu("A10G", 24, 125),
    "v100": _V100_16, "v10016gb": _V100_16, "v10032gb": _V100_32,
    "rtx4090": Gpu("RTX 4090", 24, 165), "rtx3090": Gpu("RTX 3090", 24, 71),
}
GPU_NAMES = "a100-40gb, a100-80gb (a100), h100, h100-pcie, h200, l4, t4, a10g, v100 (16gb), v100-32gb, rtx4090, rtx3090"


@dataclass(frozen=True)
class Linear:
    """One linear layer of the model (`name` as in named_modules), the unit LoRA and NF4 work on."""

    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ModelShape:
    """What memory planning needs to know about a model."""

    total_params: int
    layers: int  # transformer blocks the activations pass through (encoder + decoder)
    hidden: int
    heads: int
    vocab: int
    linears: tuple[Linear, ...] = ()  # every linear layer but the output head
    attention_targets: tuple[str, ...] = ("q", "k", "v", "o")  # the attention projections (full or leaf names)
    encoder_decoder: bool = False
    prefix_layers: int = 0  # layers peft gives a prefix (the config's num_hidden_layers)
    kv_hidden: int = 0  # width of the keys and values a prefix supplies
    activation_extra: float = 0.0  # s*b*h values a layer keeps beyond the formula's (an activation written in Python)
    description: str = ""


@dataclass(frozen=True)
class TrainingSetup:
    """How the model is trained: method, precision, optimizer, parallelism and batch."""

    method: PlannedMethod = "full"
    precision: Precision = "mixed"
    optimizer: Optimizer = "adamw"
    gpus: int = 1
    strategy: PlannedSharding = "ddp"
    batch_size: int = 8  # per GPU
    max_length: int = 512
    gradient_checkpointing: bool = False
    flash_attention: bool = False
    lora_rank: int = 8
    lora_targets: PlannedLoraTargets = "attention"
    num_virtual_tokens: int = 20
    double_quant: bool = True

    def validate(self) -> None:
        check_fields(self)  # the Literal choices
        for flag in ("gpus", "batch_size", "max_length", "lora_rank", "num_virtual_tokens"):
            if getattr(self, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be at least 1, not {getattr(self, flag)}")


@dataclass(frozen=True)
class MemoryPlan:
    """Memory per GPU, in decimal GB."""

    weights_gb: float
    """Weights held by one GPU (frozen ones in their storage format)."""
    gradients_gb: float
    """Gradients of the trained parameters."""
    optimizer_gb: float
    """Optimizer states (and an fp32 master copy under mixed precision)."""
    activations_gb: float
    """Activations kept for the backward pass at the peak, with the loss's logits buffers."""
    trainable_params: int
    total_params: int
    setup: TrainingSetup = field(default_factory=TrainingSetup)

    @property
    def model_states_gb(self) -> float:
        return self.weights_gb + self.gradients_gb + self.optimizer_gb

    @property
    def total_gb(self) -> float:
        return self.model_states_gb + self.activations_gb

    def to_json(self, gpu: Gpu | None = None) -> dict:
        names = ("weights_gb", "gradients_gb", "optimizer_gb", "model_states_gb", "activations_gb", "total_gb")
        record = {name: round(getattr(self, name), 6) for name in names}
        setup = self.setup
        record.update(
            trainable_params=self.trainable_params, total_params=self.total_params, gpus=setup.gpus,
            strategy=setup.strategy, method=setup.method, precision=setup.precision, optimizer=setup.optimizer,
            batch_size=setup.batch_size, max_length=setup.max_length, gradient_checkpointing=setup.gradient_checkpointing,
        )
        if gpu is not None:
            record.update(gpu=gpu.name or None, gpu_memory_gb=gpu.memory_gb, fits=self.total_gb <= gpu.memory_gb)
        return record


# ---------------------------------------------------------------- sizes from the command line


_COUNT = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_count(text: str | float | int, flag: str) -> float:
    """'7.5e9', '7.5B', '350M', '1.3b', '70k' -> a positive number; anything else is a UserError naming `flag`."""
    match = _COUNT.match(str(text).replace("_", "").replace(",", ""))
    if not match:
        raise UserError(f"{flag} {text!r} is not a number; write e.g. 7.5e9, 7.5B, 350M or 70k")
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if value <= 0 or not math.isfinite(value):
        raise UserError(f"{flag} must be positive, not {text}")
    return value


def human(count: float) -> str:
    """7.5e9 -> '7.5B' (three significant figures)."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return f"{count:.3g}"


def find_gpu(name: str | None, memory_gb: float | None = None) -> Gpu | None:
    """A known GPU by name ('H100', 'a100-40gb', 'nvidia a100'), with `memory_gb` overriding its memory."""
    if memory_gb is not None and memory_gb <= 0:
        raise UserError(f"--gpu-memory must be positive, not {memory_gb}")
    if name is None:
        return Gpu("", memory_gb) if memory_gb is not None else None
    key = re.sub(r"[\s_\-]", "", name.lower()).removeprefix("nvidia")
    if key not in GPUS:
        raise UserError(f"unknown GPU '{name}'; use one of {GPU_NAMES}, or give --gpu-memory GB")
    gpu = GPUS[key]
    return Gpu(gpu.name, memory_gb, gpu.peak_tflops) if memory_gb is not None else gpu


# ---------------------------------------------------------------- model shapes


def gpt_linears(layers: int, hidden: int) -> tuple[Linear, ...]:
    """A GPT-style block's linear layers: query, key, value and output projections, and a 4h MLP."""
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "o": (hidden, hidden),
              "fc_in": (hidden, 4 * hidden), "fc_out": (4 * hidden, hidden)}
    return tuple(Linear(f"layers.{i}.{n}", *shape) for i in range(layers) for n, shape in shapes.items())


def approx_params(layers: int, hidden: int, vocab: int) -> int:
    """12*L*h^2 in the blocks (4h^2 attention, 8h^2 MLP) plus the embedding; biases and norms left out."""
    return 12 * layers * hidden**2 + vocab * hidden


def _derive_hidden(params: float, layers: int, vocab: int) -> int:
    """Solve 12*L*h^2 + vocab*h = N for h."""
    hidden = (-vocab + math.sqrt(vocab**2 + 48 * layers * params)) / (24 * layers)
    return max(1, round(hidden / 64) * 64 if hidden >= 64 else round(hidden))


def _derive_layers(params: float, hidden: int, vocab: int) -> int:
    return max(1, round((params - vocab * hidden) / (12 * hidden**2)))


def _derive_shape(params: float, vocab: int) -> tuple[int, int]:
    """Layers and hidden size with hidden = 128 * layers whose parameter count comes closest to `params`."""
    layers = min(range(1, 512), key=lambda n: abs(approx_params(n, 128 * n, vocab) - params))
    return layers, 128 * layers


def shape_from_size(
    params: float | None = None, layers: int | None = None, hidden: int | None = None,
    heads: int | None = None, vocab: int | None = None,
) -> ModelShape:
    """A decoder-only GPT-style shape from a parameter count and whatever of the architecture is known."""
    for flag, value in (("--layers", layers), ("--hidden", hidden), ("--heads", heads), ("--vocab", vocab)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, not {value}")
    vocab = vocab or DEFAULT_VOCAB
    if params is None:
        if layers is None or hidden is None:
            raise UserError("give --model DIR, or --params N (optionally with --layers, --hidden, --heads, --vocab)")
        params = approx_params(layers, hidden, vocab)
    if params <= 0:
        raise UserError(f"--params must be positive, not {params}")
    if layers is None and hidden is None:
        layers, hidden = _derive_shape(params, vocab)
    elif hidden is None:
        hidden = _derive_hidden(params, layers, vocab)
    elif layers is None:
        layers = _derive_layers(params, hidden, vocab)
    heads = heads or max(1, round(hidden / 128))
    return ModelShape(
        total_params=int(params), layers=layers, hidden=hidden, heads=heads, vocab=vocab,
        linears=gpt_linears(layers, hidden), prefix_layers=layers, kv_hidden=hidden,
        description=f"{human(params)} params, {layers} layers x {hidden} hidden, {heads} heads, vocab {vocab}",
    )


def shape_from_model(spec: str, trust_remote_code: bool = False) -> ModelShape:
    """Count a model's parameters exactly by building it on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoConfig

    from ..models import locate

    base = locate(spec).base
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the config of {spec}: {' '.join(str(exc).split())[:200]}") from exc
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    with torch.device("meta"):
        model = _model_from_config(config, spec, trust_remote_code)
    return _shape_of(model, config, spec)


def _model_from_config(config, spec: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    try:
        return auto.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise UserError(f"{spec}: model type '{config.model_type}' is not a causal or seq2seq language model") from exc


def _shape_of(model, config, spec: str) -> ModelShape:
    from ..train.methods import attention_projections
    layers = config.num_hidden_layers
    decoder_layers = getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    hidden, heads = config.hidden_size, config.num_attention_heads
    blocks = layers + ((decoder_layers or layers) if encoder_decoder else 0)
    total = sum(p.numel() for p in model.parameters())  # parameters() skips tied duplicates
    return ModelShape(
        total_params=total, layers=blocks, hidden=hidden, heads=heads, vocab=config.vocab_size,
        linears=(linears := _linears_of(model)), attention_targets=tuple(attention_projections([m.name for m in linears])),
        encoder_decoder=encoder_decoder, prefix_layers=layers, kv_hidden=_kv_hidden(config),
        activation_extra=_activation_extra(config),
        description=f"{spec}: {human(total)} params, {blocks} layers x {hidden} hidden, {heads} heads, vocab {config.vocab_size}",
    )


def _linears_of(model) -> tuple[Linear, ...]:
    """Every nn.Linear and GPT-2 Conv1D but the output head: the layers peft's 'all-linear' targets."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    linears = []
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, torch.nn.Linear):
            linears.append(Linear(name, module.in_features, module.out_features))
        elif isinstance(module, Conv1D):  # weight is (in, out), the transpose of nn.Linear's
            linears.append(Linear(name, *module.weight.shape))
    return tuple(linears)


def _kv_hidden(config) -> int:
    """The width of the keys and values: smaller than hidden under grouped-query attention (as peft sizes prefixes)."""
    kv_heads = getattr(config, "num_key_value_heads", None)
    if not kv_heads:
        return config.hidden_size
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return head_dim * kv_heads


def _activation_extra(config) -> float:
    """Values a layer keeps beyond the formula's one GeLU input, because its activation is written in Python.

    GPT-2's and T5's `gelu_new` is a chain of tensor operations, and autograd keeps four MLP-wide tensors of it
    where a fused GeLU keeps one. The count is measured, not listed: the activation runs once on a small tensor.
    """
    import torch
    from transformers.activations import ACT2FN

    name = next((getattr(config, a) for a in ("activation_function", "hidden_act", "dense_act_fn")
                 if isinstance(getattr(config, a, None), str)), None)
    if name not in ACT2FN:
        return 0.0
    probe, saved = torch.randn(64, requires_grad=True) * 1.0, {}

    def keep(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        ACT2FN[name](probe)
    copies = sum(saved.values()) / probe.untyped_storage().nbytes()
    mlp_width = next((getattr(config, a) for a in ("n_inner", "intermediate_size", "d_ff", "encoder_ffn_dim")
                      if getattr(config, a, None)), 4 * config.hidden_size)
    return max(0.0, copies - 1) * mlp_width / config.hidden_size


# ---------------------------------------------------------------- trained parameters


def lora_modules(shape: ModelShape, targets: str) -> list[Linear]:
    """The linear layers LoRA adapts, as `llmcycle finetune` picks them: every attention projection, or every
    linear but the head."""
    if targets == "all-linear":
        return list(shape.linears)
    if not shape.attention_targets:
        raise UserError("no attention projections found in this model; use --lora-targets all-linear")
    chosen = set(shape.attention_targets)
    return [m for m in shape.linears if m.name in chosen or m.name.rsplit(".", 1)[-1] in chosen]


def trainable_params(shape: ModelShape, setup: TrainingSetup) -> int:
    """The parameters the method trains (added ones for LoRA and prompts, all of them for full fine-tuning)."""
    if setup.method == "full":
        return shape.total_params
    if setup.method in ("lora", "qlora"):
        return sum(setup.lora_rank * (m.in_features + m.out_features) for m in lora_modules(shape, setup.lora_targets))
    if setup.method == "prompt-tuning":
        prompts = 2 if shape.encoder_decoder else 1  # peft gives encoder and decoder a prompt each
        return setup.num_virtual_tokens * prompts * shape.hidden
    layers, kv_hidden = shape.prefix_layers or shape.layers, shape.kv_hidden or shape.hidden
    return setup.num_virtual_tokens * layers * 2 * kv_hidden  # a key and a value per layer


def nf4_bytes_per_param(double_quant: bool) -> float:
    """4 bits plus the absmax constants: 8 bits per 64 values and 32 per 256 constants, or 32 bits per 64."""
    if double_quant:
        constant_bits = 8 / QUANT_BLOCK + 32 / (QUANT_BLOCK * DOUBLE_QUANT_BLOCK)
    else:
        constant_bits = 32 / QUANT_BLOCK
    return (NF4_BITS + constant_bits) / 8


# ---------------------------------------------------------------- bytes


def quantized_weight_bytes(shape: ModelShape, method: str, kept_bytes: int) -> float | None:
    """Bytes of a model's weights stored for deployment by `method`; other tensors keep `kept_bytes` each.

    int8 (dynamic or weight-only): one byte a linear weight plus one scale per output row in the kept dtype.
    int4 weight-only: half a byte a linear weight plus a scale and a zero point per group of 128 inputs (bfloat16).
    nf4: as QLoRA stores its frozen base (nf4_bytes_per_param). None for a method without a figure here.
    """
    linear = sum(m.in_features * m.out_features for m in shape.linears)
    kept = (shape.total_params - linear) * kept_bytes
    if method in ("int8-dynamic", "int8-weight"):
        return linear + sum(m.out_features for m in shape.linears) * kept_bytes + kept
    if method == "int4-weight":
        return linear / 2 + sum(m.out_features * (m.in_features // INT4_GROUP) for m in shape.linears) * 2 * 2 + kept
    if method == "nf4":
        return frozen_weight_bytes(shape, TrainingSetup(method="qlora", precision="bf16", double_quant=True))
    return None


def weight_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def optimizer_bytes(optimizer: str, precision: str) -> int:
    """Optimizer state a trainable parameter; mixed precision adds its 4-byte fp32 master copy."""
    master = 4 if precision == "mixed" else 0
    state = {"adamw": 2 * (2 if precision in ("bf16", "fp16") else 4), "adamw8bit": 2, "sgd": 0}[optimizer]
    return master + state


def frozen_weight_bytes(shape: ModelShape, setup: TrainingSetup) -> float:
    """The base model's weights when the method leaves it frozen; QLoRA's linear weights in NF4."""
    if setup.method == "full":
        return 0.0
    if setup.method != "qlora":
        return shape.total_params * weight_bytes(setup.precision)
    quantised = min(sum(m.in_features * m.out_features for m in shape.linears), shape.total_params)
    kept = shape.total_params - quantised  # embeddings, norms, biases, output head
    return quantised * nf4_bytes_per_param(setup.double_quant) + kept * weight_bytes(setup.precision)


def layer_activation_bytes(
    seq: int, batch: int, hidden: int, heads: int, value_bytes: int, flash: bool, unsaved_inputs: float = 0
) -> float:
    """Korthikanti et al. 2022: 34*s*b*h + 5*a*s^2*b bytes in 16 bits, of which 2*s*b*h + a*s^2*b are 1-byte masks.

    `unsaved_inputs` is how many s*b*h values fewer the layer keeps (negative: more).
    """
    scores = 0 if flash else heads * seq * seq * batch
    values = (16 - unsaved_inputs) * seq * batch * hidden + 2 * scores
    masks = 2 * seq * batch * hidden + scores
    return value_bytes * values + masks


def unsaved_linear_inputs(setup: TrainingSetup) -> int:
    """s*b*h values a layer need not keep because the linears they feed are frozen and not adapted."""
    if setup.method == "full" or (setup.method in ("lora", "qlora") and setup.lora_targets == "all-linear"):
        return 0
    output_projection, mlp_in, mlp_out = 1, 1, 4
    qkv = 0 if setup.method in ("lora", "qlora") else 1  # LoRA's default targets read the q/k/v input
    return output_projection + mlp_in + mlp_out + qkv


def _layer_bytes(shape: ModelShape, setup: TrainingSetup) -> tuple[float, float]:
    """(one layer's saved tensors, what every layer keeps through the step) in bytes."""
    seq = setup.max_length + (setup.num_virtual_tokens if setup.method == "prompt-tuning" else 0)
    value_bytes = 4 if setup.precision == "fp32" else 2
    one_layer = layer_activation_bytes(
        seq, setup.batch_size, shape.hidden, shape.heads, value_bytes, setup.flash_attention,
        unsaved_linear_inputs(setup) - shape.activation_extra,
    )
    if setup.gradient_checkpointing:  # only the layer inputs are kept
        return one_layer, shape.layers * value_bytes * seq * setup.batch_size * shape.hidden
    return one_layer, shape.layers * one_layer


def logits_values(shape: ModelShape, setup: TrainingSetup) -> int:
    """Values of one (batch, seq, vocab) tensor."""
    return setup.batch_size * setup.max_length * shape.vocab


def saved_activation_bytes(shape: ModelShape, setup: TrainingSetup) -> float:
    """What the forward pass leaves for backward when the caller holds the logits: the layers' saved tensors
    (their inputs only, under checkpointing), the logits and their fp32 log-softmax."""
    value_bytes = 4 if setup.precision == "fp32" else 2
    return _layer_bytes(shape, setup)[1] + logits_values(shape, setup) * (value_bytes + 4)


def activation_bytes(shape: ModelShape, setup: TrainingSetup) -> float:
    """Activation memory at its peak: the layers' saved tensors and three fp32 logit-sized buffers as backward starts,
    or, under checkpointing, the layer inputs and the larger of those buffers and one recomputed layer."""
    one_layer, kept = _layer_bytes(shape, setup)
    logits = logits_values(shape, setup) * 12  # log-softmax, its gradient, the logits' gradient: fp32
    return kept + (max(logits, one_layer) if setup.gradient_checkpointing else logits)


def plan_memory(shape: ModelShape, setup: TrainingSetup) -> MemoryPlan:
    """Memory per GPU for training `shape` as `setup` says."""
    setup.validate()
    trained = trainable_params(shape, setup)
    weights = frozen_weight_bytes(shape, setup) + trained * weight_bytes(setup.precision)
    gradients = trained * weight_bytes(setup.precision)
    optimizer = trained * optimizer_bytes(setup.optimizer, setup.precision)
    stage = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[setup.strategy]
    gpus = setup.gpus
    optimizer /= gpus if stage >= 1 else 1
    gradients /= gpus if stage >= 2 else 1
    weights /= gpus if stage >= 3 else 1
    total = shape.total_params + (0 if setup.method == "full" else trained)
    return MemoryPlan(
        weights / GB, gradients / GB, optimizer / GB, activation_bytes(shape, setup) / GB, trained, total, setup
    )


def verdict(plan: MemoryPlan, gpu: Gpu) -> str:
    """'fits on an H100 (80 GB) with 12.3 GB to spare', or how far it is over."""
    gpus, size = plan.setup.gpus, f"{gpu.memory_gb:g} GB"
    if not gpu.name:
        where = f"in {size}" + (" per GPU" if gpus > 1 else "")
    elif gpus > 1:
        where = f"on each of {gpus} {gpu.name} GPUs ({size})"
    else:
        where = f"on {_article(gpu.name)} {gpu.name} ({size})"
    spare = gpu.memory_gb - plan.total_gb
    if spare >= 0:
        return f"fits {where} with {spare:.1f} GB to spare"
    return f"does not fit {where}: needs {plan.total_gb:.1f} GB, {-spare:.1f} GB more"


def _article(name: str) -> str:
    return "an" if name[:1].upper() in "AEFHILMNORSX" else "a"  # letters whose names start with a vowel sound
