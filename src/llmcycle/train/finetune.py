"""Instruction fine-tuning, top to bottom: set up, train, evaluate, save.

Our own loop rather than the Hugging Face Trainer because the run contract needs things the Trainer does not
give as they are: the loss normalised by the completion tokens of the whole accumulated step (so batch 8 x
accumulation 1 equals batch 1 x accumulation 8 on variable-length data), checkpoints that resume to the same
weights, and a run folder that appears complete or not at all. Methods come from peft (training/methods.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config as configs
from ..console import note, print_table, progress
from ..data import load_examples, load_template
from ..errors import UserError
from ..models import DECODER_ONLY, LoadedModel, chat_renderer, load_base, locate, pick_device, resolve_dtype
from ..outputs import atomic_open, write_json
from . import checkpoints, distributed
from .distributed import Distributed, DistributedSettings
from .methods import ADAPTER_METHODS, DEFAULT_LR, METHODS, apply_method, count_parameters
from .sft_data import Tokenized, collate, collate_packed, completion_loss_sum, count_targets, epoch_batches, pack, tokenize


@dataclass
class FinetuneConfig(DistributedSettings):
    """Everything that defines a fine-tuning run; saved as DIR/config.yaml."""

    model: str = ""
    """Base model: a save_pretrained folder, an llmcycle run folder with model/, or a hub id."""
    data: str = ""
    """Training rows (prompt/completion, messages, alpaca, or any fields with a template)."""
    out: str = ""
    """Run folder to write."""
    method: str = "lora"
    """full, lora, qlora, prompt-tuning, prefix-tuning or freeze."""
    eval_data: str | None = None
    """Held-out rows for the validation loss."""
    epochs: int = 1
    """Passes over the training data (unless max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides epochs."""
    lr: float | None = None
    """Peak learning rate; default depends on the method (full 5e-5, lora 2e-4, prompt tuning 3e-2)."""
    batch_size: int = 8
    """Rows per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_length: int = 512
    """Longest tokenised row; longer rows are cut (and counted)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up."""
    lr_scheduler: str = "linear"
    """linear, cosine or constant (after warm-up)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    seed: int = 0
    """Seed for initialisation, data order and dropout."""
    dtype: str = "auto"
    """auto: float32 weights, with bfloat16 autocast on a GPU; or float32, bfloat16, float16 weights."""
    eval_every: int | None = None
    """Compute the validation loss every N steps (and always at the end)."""
    save_every: int | None = None
    """Write a checkpoint every N steps."""
    log_every: int = 1
    """Write a log.jsonl line every N steps."""
    packing: bool = False
    """Pack short decoder-only rows into full sequences (no attention across rows)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third slower."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_targets: str = "attention"
    """attention, all-linear, or comma-separated module names (q,v)."""
    quant_type: str = "nf4"
    """QLoRA 4-bit type: nf4 or fp4."""
    double_quant: bool = True
    """QLoRA: quantise the quantisation constants too."""
    compute_dtype: str = "bfloat16"
    """QLoRA: dtype of the matrix products on dequantised weights."""
    num_virtual_tokens: int = 20
    """Prompt and prefix tuning: trained virtual tokens."""
    prompt_init_text: str | None = None
    """Prompt tuning: initialise the virtual tokens from this text instead of randomly."""
    trainable: str | None = None
    """freeze: what trains, e.g. last:2, norm, lm_head, or a parameter-name substring; comma-separated."""
    template: str | None = None
    """YAML template mapping row fields to prompt and completion."""
    split: str | None = None
    """Split of a hub dataset."""
    skip_bad_rows: bool = False
    """Skip unusable rows instead of stopping."""
    trust_remote_code: bool = False
    """Allow code shipped with a hub model to run."""

    def validate(self) -> None:
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise UserError(f"--{name} is required")
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}'; use one of {', '.join(METHODS)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "lora_rank": self.lora_rank, "num_virtual_tokens": self.num_virtual_tokens, "log_every": self.log_every}
        optional = {"max_steps": self.max_steps, "eval_every": self.eval_every, "save_every": self.save_every}
        for name, value in [*positive.items(), *((k, v) for k, v in optional.items() if v is not None)]:
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.max_length < 2:
            raise UserError("--max-length must be at least 2")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr must be above 0 (got {self.lr})")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm < 0 or not 0 <= self.lora_dropout < 1:
            raise UserError("--warmup-steps, --weight-decay and --max-grad-norm must be 0 or more, --lora-dropout in [0, 1)")
        if self.lr_scheduler not in ("linear", "cosine", "constant"):
            raise UserError(f"unknown --lr-scheduler '{self.lr_scheduler}'; use linear, cosine or constant")
        if self.quant_type not in ("nf4", "fp4"):
            raise UserError(f"unknown --quant-type '{self.quant_type}'; use nf4 or fp4")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16") or self.compute_dtype not in ("float32", "bfloat16", "float16"):
            raise UserError("--dtype must be auto, float32, bfloat16 or float16 (--compute-dtype without auto)")
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


def check_out_dir(cfg, out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to overwrite another run."""
    if resume and cfg.deepspeed:
        raise UserError("--resume is not supported with --deepspeed; checkpoints resume under --strategy ddp or fsdp")
    finished = (out / "model").exists() or (out / "adapter").exists()
    if resume:
        found = checkpoints.checkpoint_dirs(out)
        if finished:
            raise UserError(f"{out} holds a finished run; nothing to resume")
        if not found:
            raise UserError(f"--resume: no complete checkpoint in {out}/checkpoints")
        saved = configs.from_dict(type(cfg), configs.read_yaml(out / "config.yaml"), str(out / "config.yaml"))
        changed = [name for name, value in configs.to_dict(saved).items() if name != "out" and getattr(cfg, name) != value]
        if changed:
            raise UserError(f"--resume with other settings than {out}/config.yaml ({changed[0]}: "
                            f"{getattr(saved, changed[0])!r} there, {getattr(cfg, changed[0])!r} now); an exact resume needs the same")
        return found[-1]
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose another --out (or --resume an unfinished run)")
    return None


def load_for_training(cfg: FinetuneConfig) -> LoadedModel:
    source = locate(cfg.model)
    if source.adapters:
        raise UserError(f"{cfg.model} is an adapter; merge it first (llmcycle merge) or train the adapter's base")
    base = str(Path(source.base).resolve()) if Path(source.base).exists() else source.base
    device = pick_device()
    extra = {}
    if cfg.method == "qlora":
        extra = {"quantization_config": qlora_config(cfg), "device_map": {"": device.index or 0}}
    dtype = torch.float32 if cfg.dtype == "auto" else resolve_dtype(cfg.dtype, device)
    loaded = load_base(base, torch_dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra)
    if cfg.method != "qlora":
        loaded.model.to(device)
    return loaded


def require_cuda_for_qlora(cfg: FinetuneConfig) -> None:
    if cfg.method != "qlora":
        return
    if not torch.cuda.is_available():
        raise UserError("--method qlora needs a CUDA GPU (bitsandbytes 4-bit); use --method lora on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("--method qlora needs bitsandbytes: pip install bitsandbytes") from None


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
        note(f"{source}: {truncated} of {len(examples)} rows were longer than --max-length {cfg.max_length} and were cut")
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


def make_optimizer(model, cfg: FinetuneConfig, total_steps: int):
    from transformers import get_scheduler

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    return optimizer, scheduler


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


def peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict:
    """Run `cfg`; returns the metrics written to DIR/metrics.json. With num_processes > 1, starts the processes."""
    cfg.validate()
    return distributed.run(["finetune"], cfg, resume, _finetune, check_out_dir)


def _finetune(cfg: FinetuneConfig, resume: bool, dist: Distributed) -> dict:
    out = Path(cfg.out)
    resume_from = check_out_dir(cfg, out, resume)
    dist.barrier()  # every process has looked at --out before the main one writes there
    require_cuda_for_qlora(cfg)
    torch.manual_seed(cfg.seed)
    loaded = load_for_training(cfg)
    device, is_seq2seq, pad_id = loaded.device, loaded.is_encoder_decoder, loaded.tokenizer.pad_token_id
    if cfg.packing and loaded.kind != DECODER_ONLY:
        raise UserError("--packing is for decoder-only models; encoder-decoder rows are already short per side")
    train_rows = load_rows(cfg, loaded, cfg.data)
    eval_rows = load_rows(cfg, loaded, cfg.eval_data) if cfg.eval_data else []
    model = apply_method(loaded.model, cfg, is_seq2seq, loaded.name)
    if resume_from is not None:
        checkpoints.load_weights(resume_from, model, cfg.is_adapter)  # into the whole model, before any sharding
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    trainable, total = count_parameters(model)
    model = dist.wrap(model)
    if dist.enabled:
        torch.manual_seed(cfg.seed + dist.rank)  # same initial weights everywhere, different dropout per process
    batch_of, per_epoch = micro_batches(train_rows, cfg, pad_id, is_seq2seq, dist)
    total_steps = cfg.max_steps or math.ceil(per_epoch * cfg.epochs / cfg.grad_accum)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    model, optimizer = dist.prepare_optimizer(model, optimizer)
    autocast = _autocast(cfg, device)
    note(f"{cfg.method} on {loaded.kind} {Path(loaded.name).name}: {trainable:,} trainable of {total:,} parameters; "
         f"{len(train_rows)} rows, {total_steps} steps, {device.type}, {'bf16 autocast' if device.type == 'cuda' and cfg.dtype == 'auto' else next(model.parameters()).dtype}")
    if dist.enabled:
        note(f"{dist.describe()}: global batch {cfg.batch_size * dist.world_size * cfg.grad_accum} = "
             f"{cfg.batch_size} rows x {dist.world_size} processes x {cfg.grad_accum} accumulation")

    state = {"step": 0, "tokens": 0, "completion_tokens": 0, "train_seconds": 0.0, "last_loss": None, "eval_loss": None, "loss_history": []}
    state = open_run_folder(cfg, out, state, resume_from, optimizer, scheduler, dist, model)

    state = _loop(cfg, model, loaded, optimizer, scheduler, batch_of, per_epoch, total_steps, state, eval_rows, autocast, out, dist)
    final_eval = evaluate_loss(model, eval_rows, cfg, pad_id, is_seq2seq, device, autocast, dist) if eval_rows else None
    weights_dir = save_final(out, model, loaded.tokenizer, cfg.is_adapter, dist)
    metrics = {
        "method": cfg.method,
        "train_loss": state["last_loss"],
        "eval_loss": final_eval,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "steps": state["step"],
        "world_size": dist.world_size,
        "global_batch_size": cfg.batch_size * dist.world_size * cfg.grad_accum,
        "tokens_per_second": state["tokens"] / max(state["train_seconds"], 1e-9),
        "completion_tokens_per_second": state["completion_tokens"] / max(state["train_seconds"], 1e-9),
        "peak_memory_bytes": peak_memory_bytes(device),
        "wall_time_s": state["train_seconds"],
    }
    size_keys = ("size_on_disk_bytes", "adapter_size_bytes") if cfg.is_adapter else ("size_on_disk_bytes",)
    return close_run_folder(out, metrics, weights_dir, dist, lambda m: _print_summary(m, weights_dir), size_keys)


def _loop(cfg, model, loaded, optimizer, scheduler, batch_of, per_epoch, total_steps, state, eval_rows, autocast, out: Path,
          dist: Distributed) -> dict:
    device, is_seq2seq, pad_id = loaded.device, loaded.is_encoder_decoder, loaded.tokenizer.pad_token_id
    with progress() as bar, main_log(out, dist) as log:
        task = bar.add_task(f"{cfg.method} fine-tuning", total=total_steps, completed=state["step"])
        while state["step"] < total_steps:
            started = time.perf_counter()
            first = state["step"] * cfg.grad_accum
            batches, weights = zip(*[batch_of(i) for i in range(first, first + cfg.grad_accum)])
            loss, targets, inputs = train_step(model, list(batches), is_seq2seq, device, autocast, dist, list(weights))
            step = state["step"] + 1
            if not math.isfinite(loss):
                kept = checkpoints.checkpoint_dirs(out)
                raise UserError(f"the loss became {loss} at step {step}; stopped. Last complete checkpoint: "
                                f"{kept[-1] if kept else 'none'}. Try a lower --lr (now {cfg.learning_rate:g})")
            dist.step(model, optimizer, cfg.max_grad_norm)
            scheduler.step()
            seconds = time.perf_counter() - started
            state.update(step=step, last_loss=loss, tokens=state["tokens"] + inputs,
                         completion_tokens=state["completion_tokens"] + targets, train_seconds=state["train_seconds"] + seconds)
            record = {"step": step, "epoch": round(step * cfg.grad_accum / per_epoch, 4), "loss": loss,
                      "lr": scheduler.get_last_lr()[0], "tokens_per_second": inputs / seconds, "memory_bytes": peak_memory_bytes(device)}
            if eval_rows and cfg.eval_every and step % cfg.eval_every == 0:
                record["eval_loss"] = state["eval_loss"] = evaluate_loss(model, eval_rows, cfg, pad_id, is_seq2seq, device, autocast, dist)
            if step % cfg.log_every == 0 or step == total_steps or "eval_loss" in record:
                log(record)
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                checkpoints.save(out, step, model, loaded.tokenizer, cfg.is_adapter, optimizer, scheduler, state, dist=dist)
            bar.update(task, completed=step, description=f"{cfg.method} fine-tuning, loss {loss:.4f}")
    return state


def open_run_folder(cfg, out: Path, state: dict, resume_from: Path | None, optimizer, scheduler, dist: Distributed, model) -> dict:
    """Create the run folder with its config.yaml (main process), restore a checkpoint's training state if
    resuming (every process), and drop log lines past it. Returns the trainer state to start from."""
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "config.yaml") as handle:
            handle.write(configs.dump_yaml(cfg))
    if resume_from is not None:
        state = checkpoints.load_training_state(resume_from, optimizer, scheduler, dist, model)
        note(f"resuming from {resume_from} (step {state['step']})")
    if dist.is_main:
        trim_log(out / "log.jsonl", state["step"])
    return state


def close_run_folder(out: Path, metrics: dict, weights_dir: Path, dist: Distributed, summary,
                     size_keys: tuple[str, ...] = ("size_on_disk_bytes",)) -> dict:
    """The main process adds the size of the saved weights (under each of `size_keys`), writes metrics.json
    and prints `summary(metrics)`; every process waits for it, so none ends the process group too early."""
    if dist.is_main:
        metrics.update(dict.fromkeys(size_keys, folder_bytes(weights_dir)))
        write_json(out / "metrics.json", metrics)
        summary(metrics)
    dist.barrier()
    return metrics


@contextlib.contextmanager
def main_log(out: Path, dist: Distributed):
    """A function appending one record to DIR/log.jsonl; on processes other than the main one it does nothing."""
    if not dist.is_main:
        yield lambda record: None
        return
    with (out / "log.jsonl").open("a", encoding="utf-8") as handle:
        def write(record: dict) -> None:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

        yield write


def _autocast(cfg: FinetuneConfig, device):
    if device.type == "cuda" and cfg.dtype == "auto" and cfg.method != "qlora":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext


def enable_gradient_checkpointing(model) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()


def trim_log(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint: the steps after it run again."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_open(path) as handle:
        handle.write("".join(line + "\n" for line in lines))


def save_final(out: Path, model, tokenizer, is_adapter: bool, dist: Distributed | None = None, within: str = "", extra=None) -> Path:
    """Write model/ or adapter/ under a temporary name, then rename: it appears only when complete.

    On several processes every one takes part (sharded weights are gathered) and the main one writes.
    `within` and `extra` are as in `checkpoints.save`; extra files go into DIR itself.
    """
    dist = dist or Distributed()
    staging, name = out / ".final.tmp", "adapter" if is_adapter else "model"
    if dist.is_main:
        shutil.rmtree(staging, ignore_errors=True)
    full_state = checkpoints.save_weights(model, tokenizer, staging, is_adapter, dist, within)
    if dist.is_main:
        checkpoints.save_extra(out, model, full_state, extra, dist)
        (staging / name).rename(out / name)
        staging.rmdir()
    return out / name


def _print_summary(metrics: dict, weights_dir: Path) -> None:
    share = f"{metrics['trainable_params']:,} of {metrics['total_params']:,} ({metrics['trainable_share']:.2%})"
    rows = [
        ("trainable parameters", share),
        ("train loss (last step)", f"{metrics['train_loss']:.4f}"),
        ("eval loss", "-" if metrics["eval_loss"] is None else f"{metrics['eval_loss']:.4f}"),
        ("tokens/s", f"{metrics['tokens_per_second']:,.0f}"),
        ("peak memory", f"{metrics['peak_memory_bytes'] / 2**20:,.0f} MiB"),
        ("wall time", f"{metrics['wall_time_s']:.1f} s"),
        ("size on disk", f"{metrics['size_on_disk_bytes'] / 2**20:,.2f} MiB ({weights_dir})"),
    ]
    print_table(f"fine-tuning: {metrics['method']}", ["", "value"], rows)
