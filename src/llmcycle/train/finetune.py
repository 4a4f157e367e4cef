"""Instruction fine-tuning, top to bottom: set up, train, evaluate, save.

Our own loop rather than the Hugging Face Trainer because the run contract needs things the Trainer does not
give as they are: the loss normalised by the completion tokens of the whole accumulated step (so batch 8 x
accumulation 1 equals batch 1 x accumulation 8 on variable-length data), checkpoints that resume to the same
weights, and a run folder that appears complete or not at all. The loop itself is the run skeleton every trainer
shares (run.py); methods come from peft (methods.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..config import above, at_least, check_fields
from ..console import note
from ..data import load_examples, load_template
from ..errors import UserError
from ..models import DECODER_ONLY, LoadedModel, chat_renderer, pick_device, resolve_dtype
from .distributed import Distributed, DistributedSettings
from .methods import ADAPTER_METHODS, DEFAULT_LR, apply_method, enable_gradient_checkpointing, load_trainable
from .run import Optimization, StepResult, Trainer, autocast_for, peak_memory_bytes, run_training, summary_table
from .settings import ComputeDtype, DataSettings, LoRASettings, LRSchedule, Method, ModelSettings, RunSettings
from .sft_data import Tokenized, collate, collate_packed, completion_loss_sum, count_targets, epoch_batches, pack, tokenize


@dataclass
class FinetuneConfig(LoRASettings, RunSettings, ModelSettings, DataSettings, DistributedSettings):
    """Everything that defines a fine-tuning run; saved as DIR/config.yaml."""

    model: str = ""
    """Base model: a save_pretrained folder, an llmcycle run folder with model/, or a hub id."""
    data: str = ""
    """Training rows (prompt/completion, messages, alpaca, or any fields with a template)."""
    out: str = ""
    """Run folder to write."""
    method: Method = "lora"
    """full, lora, qlora, prompt-tuning, prefix-tuning or freeze."""
    eval_data: str | None = None
    """Held-out rows for the validation loss."""
    epochs: int = at_least(1, 1)
    """Passes over the training data (unless max_steps is set)."""
    max_steps: int | None = at_least(None, 1)
    """Optimizer steps to run; overrides epochs."""
    lr: float | None = above(None, 0)
    """Peak learning rate; default depends on the method (full 5e-5, lora 2e-4, prompt tuning 3e-2)."""
    batch_size: int = at_least(8, 1)
    """Rows per micro-batch."""
    grad_accum: int = at_least(1, 1)
    """Micro-batches per optimizer step."""
    max_length: int = at_least(512, 2)
    """Longest tokenised row; longer rows are cut (and counted)."""
    warmup_steps: int = at_least(0, 0)
    """Steps of linear learning-rate warm-up."""
    lr_scheduler: LRSchedule = "linear"
    """linear, cosine or constant (after warm-up)."""
    weight_decay: float = at_least(0.0, 0)
    """AdamW weight decay."""
    max_grad_norm: float = at_least(1.0, 0)
    """Gradient clipping norm (0 disables clipping)."""
    eval_every: int | None = at_least(None, 1)
    """Compute the validation loss every N steps (and always at the end)."""
    log_every: int = at_least(1, 1)
    """Write a log.jsonl line every N steps."""
    packing: bool = False
    """Pack short decoder-only rows into full sequences (no attention across rows)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third slower."""
    lora_dropout: float = at_least(0.05, 0, below=1)
    """Dropout on the LoRA input."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """QLoRA 4-bit type: nf4 or fp4."""
    double_quant: bool = True
    """QLoRA: quantise the quantisation constants too."""
    compute_dtype: ComputeDtype = "bfloat16"
    """QLoRA: dtype of the matrix products on dequantised weights."""
    num_virtual_tokens: int = at_least(20, 1)
    """Prompt and prefix tuning: trained virtual tokens."""
    prompt_init_text: str | None = None
    """Prompt tuning: initialise the virtual tokens from this text instead of randomly."""
    trainable: str | None = None
    """freeze: what trains, e.g. last:2, norm, lm_head, or a parameter-name substring; comma-separated."""
    template: str | None = None
    """YAML template mapping row fields to prompt and completion."""

    def validate(self) -> None:
        check_fields(self, required=("model", "data", "out"))
        if self.method == "freeze" and not self.trainable:
            raise UserError("--method freeze needs --trainable, for example last:2 or last:1,norm")
        self.validate_distributed()
        if self.method == "qlora" and self.num_processes > 1 and (self.strategy == "fsdp" or self.deepspeed):
            raise UserError("--method qlora trains on several processes with --strategy ddp only (4-bit weights are not sharded here)")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def is_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS


# ---------------------------------------------------------------- setup


def load_for_training(cfg: FinetuneConfig) -> LoadedModel:
    extra = {}
    if cfg.method == "qlora":
        extra = {"quantization_config": qlora_config(cfg), "device_map": {"": pick_device().index or 0}}
    return load_trainable(cfg.model, cfg.dtype, cfg.trust_remote_code, "train the adapter's base", **extra)


def require_cuda_for_qlora(cfg: FinetuneConfig) -> None:
    if cfg.method != "qlora":
        return
    if not torch.cuda.is_available():
        raise UserError("--method qlora needs a CUDA GPU (bitsandbytes 4-bit); use --method lora on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise UserError("--method qlora needs bitsandbytes: pip install bitsandbytes") from exc


def qlora_config(cfg: FinetuneConfig):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type, bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(cfg.compute_dtype, torch.device("cuda")),
    )


def load_rows(cfg: FinetuneConfig, loaded: LoadedModel, source: str) -> list[Tokenized]:
    template = load_template(cfg.template) if cfg.template else None
    examples = load_examples(
        source, split=cfg.split, template=template, chat=chat_renderer(loaded.tokenizer), seed=cfg.seed,
        require_completion=True, skip_bad_rows=cfg.skip_bad_rows,
    ).examples
    rows, truncated, dropped = tokenize(examples, loaded.tokenizer, loaded.is_encoder_decoder, cfg.max_length)
    if truncated:
        kept = ("each prompt keeps its first tokens: what comes after, such as a question at its end, is not read"
                if loaded.is_encoder_decoder else "prompt and completion together")
        note(f"{source}: {truncated} of {len(examples)} rows were longer than --max-length {cfg.max_length} and were cut "
             f"to {cfg.max_length} tokens ({kept})")
    if dropped:
        note(f"{source}: {dropped} rows dropped: no completion token fits in --max-length {cfg.max_length}")
    if not rows:
        raise UserError(f"{source}: no row has a completion token within --max-length {cfg.max_length}")
    return rows


def micro_batches(rows: list[Tokenized], cfg: FinetuneConfig, pad_id: int, is_encoder_decoder: bool, dist: Distributed):
    """This process's part of micro-batch `i` of the run (across epochs) and its loss weight.

    The same for a fresh and a resumed run; on P processes, global micro-batch `i` holds the rows of a
    one-process run with P times the batch size.
    """
    if cfg.packing:
        rows = pack(rows, cfg.max_length)
    global_batch = cfg.batch_size * dist.world_size
    per_epoch = math.ceil(len(rows) / global_batch)

    def batch(index: int) -> tuple[dict[str, torch.Tensor], float]:
        epoch, position = divmod(index, per_epoch)
        chosen, weight = dist.shard([rows[i] for i in epoch_batches(len(rows), global_batch, cfg.seed, epoch)[position]])
        return (collate_packed(chosen, pad_id) if cfg.packing else collate(chosen, pad_id, is_encoder_decoder)), weight

    return batch, per_epoch


# ---------------------------------------------------------------- the loop


def train_step(model, batches: list[dict], is_encoder_decoder: bool, device, autocast,
               dist: Distributed | None = None, weights: list[float] | None = None) -> tuple[float, int, int]:
    """One optimizer step's forward and backward passes: (mean loss, completion tokens, input tokens), all processes.

    Each micro-batch's summed loss is divided by the completion tokens of the whole step (on every process), so
    the gradient is that of one large batch, however the step is split into micro-batches and processes.
    """
    dist = dist or Distributed()
    weights = weights or [1.0] * len(batches)
    local_targets = sum(count_targets(b, is_encoder_decoder) * w for b, w in zip(batches, weights))
    local_inputs = sum(w * (int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel())
                       for b, w in zip(batches, weights))
    targets, inputs = dist.sum(local_targets, local_inputs)
    scale, total_loss = dist.loss_scale(targets), 0.0
    for index, (batch, weight) in enumerate(zip(batches, weights)):
        batch = {key: value.to(device) for key, value in batch.items()}
        with dist.accumulating(model, sync=index == len(batches) - 1):
            with autocast():
                loss = completion_loss_sum(model, batch, is_encoder_decoder) * (scale * weight)
            dist.backward(loss, len(batches))
        total_loss += loss.item()
    (total_loss,) = dist.sum(total_loss)
    return total_loss / dist.world_size, int(targets), int(inputs)


@torch.no_grad()
def evaluate_loss(model, rows: list[Tokenized], cfg: FinetuneConfig, pad_id: int, is_encoder_decoder: bool, device, autocast,
                  dist: Distributed | None = None) -> float:
    """Validation loss: mean cross-entropy per completion token (each process scores its share of the rows)."""
    dist = dist or Distributed()
    model.eval()
    total, count, step = 0.0, 0.0, cfg.batch_size * dist.world_size
    for start in range(0, len(rows), step):
        part, weight = dist.shard(rows[start : start + step])
        batch = {k: v.to(device) for k, v in collate(part, pad_id, is_encoder_decoder).items()}
        with autocast():
            total += completion_loss_sum(model, batch, is_encoder_decoder).item() * weight
        count += count_targets(batch, is_encoder_decoder) * weight
    model.train()
    total, count = dist.sum(total, count)
    return total / max(count, 1)


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict:
    """Run `cfg`; returns the metrics written to DIR/metrics.json. With num_processes > 1, starts the processes."""
    return run_training(["finetune"], cfg, resume, FinetuneTrainer)


class FinetuneTrainer(Trainer):
    """Model, data, step and metrics of instruction fine-tuning."""

    cfg: FinetuneConfig

    def build(self) -> torch.nn.Module:
        cfg, dist = self.cfg, self.dist
        require_cuda_for_qlora(cfg)
        loaded = load_for_training(cfg)
        if cfg.packing and loaded.kind != DECODER_ONLY:
            raise UserError("--packing is for decoder-only models; encoder-decoder rows are already short per side")
        self.loaded, self.tokenizer = loaded, loaded.tokenizer
        self.train_rows = load_rows(cfg, loaded, cfg.data)
        self.eval_rows = load_rows(cfg, loaded, cfg.eval_data) if cfg.eval_data else []
        model = apply_method(loaded.model, cfg, loaded.is_encoder_decoder, loaded.name)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.batch_of, self.micro_per_epoch = micro_batches(self.train_rows, cfg, loaded.tokenizer.pad_token_id,
                                                            loaded.is_encoder_decoder, dist)
        self.total_steps = cfg.max_steps or math.ceil(self.micro_per_epoch * cfg.epochs / cfg.grad_accum)
        self.autocast = autocast_for(cfg.dtype, loaded.device, cfg.method != "qlora")
        self.is_adapter, self.max_grad_norm = cfg.is_adapter, cfg.max_grad_norm
        self.description = f"{cfg.method} fine-tuning"
        self.size_keys = ("size_on_disk_bytes", "adapter_size_bytes") if cfg.is_adapter else ("size_on_disk_bytes",)
        return model.train()

    def optimization(self) -> Optimization:
        cfg = self.cfg
        return Optimization(cfg.learning_rate, cfg.weight_decay, cfg.lr_scheduler, cfg.warmup_steps)

    def announce(self) -> None:
        cfg, loaded, dist = self.cfg, self.loaded, self.dist
        precision = "bf16 autocast" if loaded.device.type == "cuda" and cfg.dtype == "auto" else next(self.model.parameters()).dtype
        note(f"{cfg.method} on {loaded.kind} {Path(loaded.name).name}: {self.trainable_params:,} trainable of "
             f"{self.total_params:,} parameters; {len(self.train_rows)} rows, {self.total_steps} steps, {loaded.device.type}, {precision}")
        if dist.enabled:
            note(f"{dist.describe()}: global batch {cfg.batch_size * dist.world_size * cfg.grad_accum} = "
                 f"{cfg.batch_size} rows x {dist.world_size} processes x {cfg.grad_accum} accumulation")

    def initial_state(self) -> dict:
        return {"tokens": 0, "completion_tokens": 0}

    def epoch(self, step: int) -> float:
        return round(step * self.cfg.grad_accum / self.micro_per_epoch, 4)

    def step(self, step: int, state: dict) -> StepResult:
        first = (step - 1) * self.cfg.grad_accum
        batches, weights = zip(*[self.batch_of(i) for i in range(first, first + self.cfg.grad_accum)])
        loss, targets, inputs = train_step(self.model, list(batches), self.loaded.is_encoder_decoder, self.loaded.device,
                                           self.autocast, self.dist, list(weights))
        state.update(tokens=state["tokens"] + inputs, completion_tokens=state["completion_tokens"] + targets)
        return StepResult(loss, per_second={"tokens_per_second": inputs})

    def after_step(self, step: int, state: dict) -> dict:
        if self.eval_rows and self.cfg.eval_every and step % self.cfg.eval_every == 0:
            return {"eval_loss": self.eval_loss()}
        return {}

    def eval_loss(self) -> float:
        loaded = self.loaded
        return evaluate_loss(self.model, self.eval_rows, self.cfg, loaded.tokenizer.pad_token_id, loaded.is_encoder_decoder,
                             loaded.device, self.autocast, self.dist)

    def final_metrics(self, state: dict, dist: Distributed) -> dict:
        cfg, seconds = self.cfg, max(state["train_seconds"], 1e-9)
        return {
            "method": cfg.method, "train_loss": state["last_loss"], "eval_loss": self.eval_loss() if self.eval_rows else None,
            "trainable_params": self.trainable_params, "total_params": self.total_params,
            "trainable_share": self.trainable_params / self.total_params,
            "steps": state["step"], "world_size": dist.world_size,
            "global_batch_size": cfg.batch_size * dist.world_size * cfg.grad_accum,
            "tokens_per_second": state["tokens"] / seconds, "completion_tokens_per_second": state["completion_tokens"] / seconds,
            "peak_memory_bytes": peak_memory_bytes(self.loaded.device), "wall_time_s": state["train_seconds"],
        }

    def summary(self, metrics: dict, weights_dir: Path) -> None:
        share = f"{metrics['trainable_params']:,} of {metrics['total_params']:,} ({metrics['trainable_share']:.2%})"
        summary_table(f"fine-tuning: {metrics['method']}", [
            ("trainable parameters", share),
            ("train loss (last step)", f"{metrics['train_loss']:.4f}"),
            ("eval loss", "-" if metrics["eval_loss"] is None else f"{metrics['eval_loss']:.4f}"),
            ("tokens/s", f"{metrics['tokens_per_second']:,.0f}"),
            ("peak memory", f"{metrics['peak_memory_bytes'] / 2**20:,.0f} MiB"),
            ("wall time", f"{metrics['wall_time_s']:.1f} s"),
            ("size on disk", f"{metrics['size_on_disk_bytes'] / 2**20:,.2f} MiB ({weights_dir})"),
        ])
