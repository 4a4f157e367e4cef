"""The run skeleton every trainer shares: one set-up and one loop for fine-tuning, pre-training, reward models,
DPO and PPO.

`train(cfg, resume, dist, TrainerClass)` owns what a run promises whatever it trains:
- the output-folder check (never overwrite another run; `--resume` only with the settings it was started with),
- the set-up (`set_up`), in the one order exact resume and seeded runs rely on: seed, the trainer's `build`,
  resumed weights, parameter counts, the distributed wrapper, per-process seeds, optimizer and schedule,
- the run folder: `config.yaml` first, `log.jsonl` one line per logged step (trimmed on resume), tracking
  (`--report-to tensorboard|mlflow`), progress, timing,
- the finite-loss check before the optimizer steps, naming the step and the last complete checkpoint,
- checkpoint cadence and exact resume (weights, optimizer, scheduler, RNG, trainer state),
- the final save (`model/` or `adapter/`, written under a temporary name) and `metrics.json`.

A trainer supplies what differs (how to build its model and data, its step and its metrics), and so reads top
to bottom like litgpt's `finetune/lora.py`. The Hugging Face Trainer is not used for the reasons in
finetune.py's docstring; this file is what it would otherwise give us.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import config as configs
from ..console import note, print_table, progress
from ..errors import UserError
from ..outputs import atomic_open, folder_bytes, write_json
from . import checkpoints, distributed
from .distributed import Distributed
from .methods import count_parameters
from .settings import LRSchedule
from .tracking import open_trackers


@dataclass
class StepResult:
    """What one training step reports: its loss, and the fields it adds to the log line."""

    loss: float
    record: dict = field(default_factory=dict)
    per_second: dict = field(default_factory=dict)
    """Counts made in this step, logged divided by its duration: {"tokens_per_second": tokens}."""


@dataclass
class Optimization:
    """How a trainer's parameters are updated: AdamW over the trainable ones, and a learning-rate schedule."""

    learning_rate: float
    weight_decay: float = 0.0
    schedule: LRSchedule | None = "linear"
    """After warm-up; None keeps the learning rate constant with no scheduler (PPO)."""
    warmup_steps: int = 0


class Trainer:
    """What a trainer supplies to the run skeleton: `build` (its model and data), `optimization`, `step`, its
    metrics and summary. The skeleton sets up everything else (`set_up`) and sets the attributes marked below."""

    description = "training"
    """Progress bar text, e.g. 'lora fine-tuning'."""
    tokenizer = None
    total_steps: int = 0
    per_epoch: int | None = None
    """Steps (optimizer steps) per pass over the data, for the log's epoch column; None where it has no meaning."""
    is_adapter: bool = False
    max_grad_norm: float = 1.0
    save_within: str = ""
    """The submodule of the built model that is saved, counted and resumed (PPO's policy in its actor-critic)."""
    save_extra = None
    """fn(unwrapped model, full state dict or None) -> {file name: tensors} saved beside the weights."""
    forward_methods: tuple[str, ...] = ()
    """Methods besides `forward` that run the model, which FSDP gathers the weights around (PPO's `generate`)."""
    size_keys: tuple[str, ...] = ("size_on_disk_bytes",)

    # Set by the skeleton:
    model: torch.nn.Module
    """The model as it trains: wrapped for DDP or FSDP, or DeepSpeed's engine."""
    optimizer: torch.optim.Optimizer
    scheduler = None
    learning_rate: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    run_out: Path | None = None
    resuming: bool = False
    """Whether `build`'s model will be overwritten by a checkpoint's weights."""

    def __init__(self, cfg, dist: Distributed):
        self.cfg, self.dist = cfg, dist

    def build(self) -> torch.nn.Module:
        """Load or build the model and read the data (torch and numpy are seeded); set `total_steps`, `tokenizer`
        and `is_adapter`. Returns the model to train, unwrapped, with only what trains requiring gradients."""
        raise NotImplementedError

    def optimization(self) -> Optimization:
        raise NotImplementedError

    def restore_extra(self, checkpoint: Path) -> None:
        """On resume, read back what `save_extra` wrote into the checkpoint."""

    def announce(self) -> None:
        """A note once the run is set up (the parameter counts are known)."""

    def initial_state(self) -> dict:
        """The trainer's own counters, saved in every checkpoint and restored on resume."""
        return {}

    def step(self, step: int, state: dict) -> StepResult:
        """Forward and backward passes of optimizer step `step` (1-based); may update `state`."""
        raise NotImplementedError

    def update_weights(self) -> None:
        """Clip, apply and clear the gradients."""
        self.dist.step(self.model, self.optimizer, self.max_grad_norm)

    def optimizer_step(self) -> None:
        """What follows a step's backward passes (once its loss is known to be finite): one update, one schedule step."""
        self.update_weights()
        if self.scheduler is not None:
            self.scheduler.step()

    def after_step(self, step: int, state: dict) -> dict:
        """Extra log fields computed after the optimizer step (periodic evaluation); a non-empty result is logged."""
        return {}

    def epoch(self, step: int) -> float | None:
        """Passes over the data after `step` steps, for the log (None: not logged)."""
        return round(step / self.per_epoch, 4) if self.per_epoch else None

    def describe(self, record: dict) -> str:
        return f"{self.description}, loss {record['loss']:.4f}"

    def final_metrics(self, state: dict, dist: Distributed) -> dict:
        """metrics.json's content (all processes call this: a final evaluation may be collective)."""
        raise NotImplementedError

    def summary(self, metrics: dict, weights_dir: Path) -> None:
        """The table printed at the end."""


def run_training(command: list[str], cfg, resume: bool, trainer_class: type[Trainer]) -> dict:
    """Check `cfg`, then train it with `trainer_class` in this process, or on the cfg.num_processes processes it
    asks for (each runs `llmcycle COMMAND`). Returns the metrics written to DIR/metrics.json."""
    cfg.validate()
    return distributed.run(command, cfg, resume, lambda c, r, d: train(c, r, d, trainer_class), check_out_dir)


def train(cfg, resume: bool, dist: Distributed, trainer_class: type[Trainer]) -> dict:
    """Run one training job: check --out, set up the trainer, loop, save, write metrics.json."""
    out = Path(cfg.out)
    resume_from = check_out_dir(cfg, out, resume)
    dist.barrier()  # every process has looked at --out before the main one writes there
    trainer = trainer_class(cfg, dist)
    trainer.run_out = out
    set_up(trainer, resume_from)
    state = {"step": 0, "train_seconds": 0.0, "last_loss": None, **trainer.initial_state()}
    state = open_run_folder(cfg, out, state, resume_from, trainer.optimizer, trainer.scheduler, dist, trainer.model)
    try:
        state = _loop(cfg, trainer, state, out, dist)
    except BaseException:
        if resume_from is None and state["step"] == 0 and dist.is_main:  # nothing trained, nothing to resume: no folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    metrics = trainer.final_metrics(state, dist)
    weights_dir = save_final(out, trainer.model, trainer.tokenizer, trainer.is_adapter, dist,
                             within=trainer.save_within, extra=trainer.save_extra)
    return close_run_folder(out, metrics, weights_dir, dist, lambda m: trainer.summary(m, weights_dir), trainer.size_keys)


def set_up(trainer: Trainer, resume_from: Path | None) -> None:
    """Every trainer's set-up, in the order exact resume and seeded runs rely on."""
    seed, dist = trainer.cfg.seed, trainer.dist
    torch.manual_seed(seed)  # the same initial weights on every process
    np.random.seed(seed)
    trainer.resuming = resume_from is not None
    model = trainer.build()
    saved = getattr(model, trainer.save_within) if trainer.save_within else model
    if resume_from is not None:  # into the whole model, before any sharding
        checkpoints.load_weights(resume_from, saved, trainer.is_adapter)
        trainer.restore_extra(resume_from)
    trainer.trainable_params, trainer.total_params = count_parameters(saved)
    model = dist.wrap(model, trainer.forward_methods)
    seed_processes(seed, dist)
    optimization = trainer.optimization()
    optimizer, trainer.scheduler = make_optimizer(model, trainer.total_steps, optimization)
    trainer.model, trainer.optimizer = dist.prepare_optimizer(model, optimizer)
    trainer.learning_rate = optimization.learning_rate
    trainer.announce()


def _loop(cfg, trainer: Trainer, state: dict, out: Path, dist: Distributed) -> dict:
    log_every, save_every = getattr(cfg, "log_every", 1), getattr(cfg, "save_every", None)
    device = next(trainer.model.parameters()).device
    with progress() as bar, main_log(out, dist) as log, open_trackers(cfg, out, dist) as track:
        task = bar.add_task(trainer.description, total=trainer.total_steps, completed=state["step"])
        while state["step"] < trainer.total_steps:
            step, started = state["step"] + 1, time.perf_counter()
            result = trainer.step(step, state)
            check_finite(result.loss, step, out, trainer.learning_rate)
            trainer.optimizer_step()
            seconds = time.perf_counter() - started
            state.update(step=step, last_loss=result.loss, train_seconds=state["train_seconds"] + seconds)
            record = _record(trainer, step, result, seconds, device)
            extra = trainer.after_step(step, state)
            record.update(extra)
            if step % log_every == 0 or step == trainer.total_steps or extra:
                log(record)
                track(record)
            if save_every and step % save_every == 0 and step < trainer.total_steps:
                checkpoints.save(out, step, trainer.model, trainer.tokenizer, trainer.is_adapter, trainer.optimizer,
                                 trainer.scheduler, state, dist=dist, within=trainer.save_within, extra=trainer.save_extra)
            bar.update(task, completed=step, description=trainer.describe(record))
    return state


def _record(trainer: Trainer, step: int, result: StepResult, seconds: float, device) -> dict:
    """One log.jsonl line: step, epoch, loss, the trainer's fields, learning rate, throughput, memory."""
    record = {"step": step}
    epoch = trainer.epoch(step)
    if epoch is not None:
        record["epoch"] = epoch
    record.update(loss=result.loss, **result.record)
    record["lr"] = trainer.scheduler.get_last_lr()[0] if trainer.scheduler is not None else trainer.learning_rate
    record.update({name: count / seconds for name, count in result.per_second.items()})
    record["memory_bytes"] = peak_memory_bytes(device)
    return record


def check_finite(loss: float, step: int, out: Path | None, learning_rate: float, what: str = "loss") -> None:
    """Stop before the optimizer steps on a loss that is NaN or infinite, naming the step and the last checkpoint."""
    if math.isfinite(loss):
        return
    kept = checkpoints.checkpoint_dirs(out) if out is not None else []
    raise UserError(f"the {what} became {loss} at step {step}; stopped. Last complete checkpoint: "
                    f"{kept[-1] if kept else 'none'}. Try a lower --lr (now {learning_rate:g})")


# ---------------------------------------------------------------- shared set-up


def make_optimizer(model, total_steps: int, optimization: Optimization):
    """AdamW over the trainable parameters, and a transformers learning-rate schedule (None without one)."""
    from transformers import get_scheduler

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=optimization.learning_rate, weight_decay=optimization.weight_decay,
                                  foreach=_foreach(parameters))
    if optimization.schedule is None:
        return optimizer, None
    scheduler = get_scheduler(optimization.schedule, optimizer, num_warmup_steps=optimization.warmup_steps,
                              num_training_steps=total_steps)
    return optimizer, scheduler


def _foreach(parameters) -> bool | None:
    """torch uses its multi-tensor (foreach) AdamW only on GPUs by default; on a CPU it is a third faster per step
    for the many small tensors of an adapter, with the same arithmetic. None (torch's choice) for sharded DTensors."""
    from torch.distributed.tensor import DTensor

    return True if all(p.device.type == "cpu" and not isinstance(p, DTensor) for p in parameters) else None


def autocast_for(dtype_setting: str, device, enabled: bool = True):
    """bfloat16 (or float16) autocast on a GPU when weights load as float32 (`--dtype auto`); otherwise none."""
    if enabled and device.type == "cuda" and dtype_setting == "auto":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext


def seed_processes(seed: int, dist: Distributed) -> None:
    """After wrapping: the same initial weights everywhere, then different dropout and samples per process."""
    if dist.enabled:
        torch.manual_seed(seed + dist.rank)


def peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# ---------------------------------------------------------------- the run folder


def check_out_dir(cfg, out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to overwrite another run."""
    if resume and getattr(cfg, "deepspeed", None):
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


def summary_table(title: str, rows: list[tuple[str, str]]) -> None:
    print_table(title, ["", "value"], rows)
