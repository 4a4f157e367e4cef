"""Training on several processes: torchrun starts them, torch's DDP or FSDP wraps the model, or DeepSpeed ZeRO.

Why torch's wrappers and not accelerate's `Accelerator` for DDP and FSDP: on a machine without GPUs accelerate
runs an FSDP request as plain DDP (its multi-CPU mode has no FSDP), so FSDP could neither run nor be tested
there, while torch's `fully_shard` (FSDP2) runs on CPUs over gloo and on GPUs over NCCL through the same code.
DeepSpeed has its own engine, which accelerate builds from the config generated here (`deepspeed_config`).
Processes are started by torch's elastic launcher, the code behind `torchrun`; a run started by an outside
`torchrun` or `accelerate launch` is recognised from its environment (WORLD_SIZE, RANK, LOCAL_RANK).

What the training loops rely on:
- every process runs the same loop on its slice of each global micro-batch (`Distributed.shard`), so P
  processes with batch size B see the rows, in the order, that one process with batch size P x B sees;
- a loss is divided by the targets of the whole global step and multiplied by P (`loss_scale`), because DDP,
  FSDP and DeepSpeed average gradients over processes: the update is that of one process on the global batch;
- only the main process writes files; weights and optimizer states are first gathered into full, unsharded
  state dicts (every process takes part), so what is written loads in plain transformers and peft.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import typing
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from .. import config as configs
from .. import console
from ..errors import ReportedError, UserError
from .settings import DeepSpeedStage, Strategy


@dataclass
class DistributedSettings:
    """Fields shared by every training config (they come last in its YAML and --help)."""

    num_processes: int = 1
    """Training processes (one per GPU, or CPU processes over gloo); above 1 they are started with torchrun."""
    # `strategy` and `deepspeed` are typed str, not their Literals, so that a ZeRO stage given to the wrong flag
    # gets a hint from `validate_distributed` instead of a bare list of choices.
    strategy: str = "ddp"
    """ddp (each process holds the whole model) or fsdp (weights, gradients and optimizer states sharded)."""
    deepspeed: str | None = None
    """zero2 or zero3: train with DeepSpeed ZeRO through accelerate instead (needs the deepspeed package)."""

    def validate_distributed(self) -> None:
        if self.num_processes < 1:
            raise UserError(f"--num-processes must be at least 1 (got {self.num_processes})")
        if self.strategy not in typing.get_args(Strategy):
            hint = {"zero3": " (ZeRO-3 sharding is fsdp here)", "zero2": " (for ZeRO-2 give --deepspeed zero2)",
                    "zero1": " (for ZeRO-1/2 give --deepspeed zero2)"}.get(self.strategy, "")
            raise UserError(f"unknown --strategy '{self.strategy}'; use {' or '.join(typing.get_args(Strategy))}{hint}")
        if self.deepspeed is not None:
            if self.deepspeed not in typing.get_args(DeepSpeedStage):
                raise UserError(f"unknown --deepspeed '{self.deepspeed}'; use {' or '.join(typing.get_args(DeepSpeedStage))}")
            if self.strategy == "fsdp":
                raise UserError("--deepspeed and --strategy fsdp are two ways to shard the same states; choose one")
            if getattr(self, "save_every", None):
                raise UserError("--save-every: checkpoints are written under --strategy ddp or fsdp, not --deepspeed "
                                "(its optimizer states have their own layout)")
            try:
                import deepspeed  # noqa: F401
            except ImportError as exc:
                raise UserError("--deepspeed needs the deepspeed package: pip install deepspeed") from exc
        if not launched_externally():
            limit, what = usable_slots()
            if self.num_processes > limit:
                raise UserError(f"--num-processes {self.num_processes} is more than this machine runs in parallel "
                                f"({what}); use at most {limit}")


def launched_externally() -> bool:
    """True inside a process started by torchrun or accelerate launch (or by `launch` below)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def usable_slots() -> tuple[int, str]:
    """How many training processes make sense here: one per GPU, else one per CPU core."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return count, f"{count} GPU{'s' if count != 1 else ''}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores, f"{cores} CPU core{'s' if cores != 1 else ''} and no GPU"


def needs_launch(settings: DistributedSettings) -> bool:
    return settings.num_processes > 1 and not launched_externally()


def run(command: list[str], cfg, resume: bool, train, check_out_dir) -> dict:
    """`train(cfg, resume, dist)` in this process, or on cfg.num_processes started ones; the run's metrics.

    Before starting processes, `check_out_dir(cfg, out, resume)` refuses a bad --out here, at once. (Inside a
    worker the check comes after joining the group, which sets num_processes from an outside launcher's
    WORLD_SIZE, so `--resume` of a torchrun-launched run compares like with like.)
    """
    if needs_launch(cfg):
        check_out_dir(cfg, Path(cfg.out), resume)
        launch(command, cfg, resume)
        return json.loads((Path(cfg.out) / "metrics.json").read_text())
    with session(cfg) as dist:
        return train(cfg, resume, dist)


# ---------------------------------------------------------------- starting the processes


def launch(command: list[str], cfg, resume: bool) -> None:
    """Run `llmcycle COMMAND --config CFG` on cfg.num_processes processes with torch's elastic launcher.

    The resolved config travels as a YAML file, so the workers run exactly what this process validated.
    A worker's user error has been printed by the worker itself; here it becomes a `ReportedError`.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="llmcycle-launch-") as folder:
        config_file = Path(folder) / "config.yaml"
        config_file.write_text(configs.dump_yaml(cfg), encoding="utf-8")
        args = ["-m", "llmcycle", *command, "--config", str(config_file), *(["--resume"] if resume else [])]
        launch_config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=cfg.num_processes, run_id=str(uuid.uuid4()),
            rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
        )
        elastic_logger = logging.getLogger("torch.distributed.elastic")
        previous = elastic_logger.level
        elastic_logger.setLevel(logging.CRITICAL)  # the workers report their own errors, in one line
        try:
            with _worker_environment(cfg.num_processes):
                elastic_launch(launch_config, sys.executable)(*args)
        except ChildFailedError as exc:
            codes = [failure.exitcode for failure in exc.failures.values()]
            raise ReportedError(2 if 2 in codes else next((c for c in codes if c > 0), 1)) from None
        finally:
            elastic_logger.setLevel(previous)


@contextlib.contextmanager
def _worker_environment(processes: int):
    """Split the CPU cores between the workers (as torchrun does), unless the user set OMP_NUM_THREADS."""
    added = {}
    if "OMP_NUM_THREADS" not in os.environ:
        cores = usable_slots()[0] if not torch.cuda.is_available() else (os.cpu_count() or 1)
        added["OMP_NUM_THREADS"] = str(max(1, cores // processes))
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        added["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would find that out itself, with a warning per process
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


# ---------------------------------------------------------------- inside a worker


@dataclass
class Distributed:
    """This process's place in the run, and the few collective operations the training loops use."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    strategy: str = "ddp"
    deepspeed: str | None = None
    accelerator: object | None = None
    """The accelerate Accelerator holding the DeepSpeed engine, with --deepspeed."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether weights live in pieces across processes (FSDP, ZeRO-3): saving gathers them first."""
        return self.enabled and (self.strategy == "fsdp" or self.deepspeed == "zero3")

    def describe(self) -> str:
        backend = torch.distributed.get_backend() if self.enabled else "none"
        engine = f"deepspeed {self.deepspeed}" if self.deepspeed else self.strategy
        return f"{self.world_size} processes ({engine}, {backend})"

    # -- data

    def shard(self, items: list) -> tuple[list, float]:
        """This process's slice of a global micro-batch, and the weight of its loss.

        When a batch has fewer items than processes, a process without one runs a forward pass on the first
        item with weight 0: DDP and FSDP need every process to take part in every step.
        """
        if not self.enabled:
            return items, 1.0
        mine = items[self.rank :: self.world_size]
        return (mine, 1.0) if mine else (items[:1], 0.0)

    def loss_scale(self, global_count: float) -> float:
        """Factor for a process's summed loss: the mean over the global step, times P to undo gradient averaging."""
        return self.world_size / max(global_count, 1)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the processes."""
        if not self.enabled:
            return list(values)
        device = torch.device("cuda", self.local_rank) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def map_chunks(self, items: list, chunk: int, score) -> list:
        """`score(part)` (one result per item) over `items` in chunks of `chunk` per process, each process
        scoring its share of every chunk; the results in item order, on every process."""
        results: list = []
        for start in range(0, len(items), chunk * self.world_size):
            part = items[start : start + chunk * self.world_size]
            gathered = self.gather_objects(score(self.shard(part)[0]))
            results += [gathered[i % self.world_size][i // self.world_size] for i in range(len(part))]
        return results

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def gather_objects(self, value) -> list:
        """`value` from every process, in rank order (on every process)."""
        if not self.enabled:
            return [value]
        found = [None] * self.world_size
        torch.distributed.all_gather_object(found, value)
        return found

    # -- the model

    def wrap(self, model: torch.nn.Module, forward_methods: tuple[str, ...] = ()) -> torch.nn.Module:
        """The model as this strategy trains it: DDP, or FSDP with each transformer block a shard unit.

        `forward_methods` name methods other than `forward` that run the model (PPO's `generate`): FSDP gathers
        the weights around them as it does around `forward`.
        """
        if not self.enabled or self.deepspeed:
            return model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = next(model.parameters()).device.type == "cuda"
            # No buffer broadcast: transformers' buffers (rotary frequencies, position ids) are constants, and
            # without it a forward pass outside training (scoring, evaluation) needs no other process.
            return DistributedDataParallel(model, device_ids=[self.local_rank] if on_gpu else None, broadcast_buffers=False)
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
        for name in forward_methods:
            register_fsdp_forward_method(model, name)
        return model

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module inside DDP or a DeepSpeed engine (FSDP2 changes the module in place: it is its own)."""
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(model, DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
            return model.module
        return model

    def prepare_optimizer(self, model, optimizer):
        """With DeepSpeed: the engine (in place of the model) and its optimizer; otherwise both unchanged."""
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    @contextlib.contextmanager
    def accumulating(self, model, sync: bool):
        """Skip the gradient all-reduce on micro-batches before the last of a step (`sync` False)."""
        if self.accelerator is not None:
            # accelerate counts the micro-batches and tells the DeepSpeed engine where a step ends; every
            # step has exactly grad_accum of them, so its count agrees with `sync`.
            with self.accelerator.accumulate(model):
                yield
        elif not self.enabled or sync:
            yield
        elif self.strategy == "ddp":
            with model.no_sync():
                yield
        else:
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

    def backward(self, loss: torch.Tensor, grad_accum: int = 1) -> None:
        if self.accelerator is not None:
            # The engine divides by its accumulation steps; our loss is already the mean over the whole step.
            self.accelerator.backward(loss * grad_accum)
        else:
            loss.backward()

    def step(self, model, optimizer, max_grad_norm: float) -> None:
        """Clip, update and clear the gradients (DeepSpeed's engine clips and steps by its config)."""
        if self.accelerator is not None:
            optimizer.step()
            optimizer.zero_grad()
            return
        if max_grad_norm > 0:
            trainable = [p for p in model.parameters() if p.requires_grad]
            # the multi-tensor path, which torch takes by default on GPUs only; sharded DTensors keep torch's choice
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm, foreach=None if self.sharded else True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def full_state_dict(self, model) -> dict | None:
        """The whole model's state dict on the main process (empty elsewhere) when weights are sharded; else None."""
        if not self.sharded:
            return None
        if self.accelerator is not None:
            return self.accelerator.get_state_dict(model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, model, optimizer) -> dict:
        """The optimizer's state to save; under FSDP gathered into one full dict keyed by parameter names."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    @contextlib.contextmanager
    def root_gathered(self, model):
        """FSDP: the root module's own weights whole for the duration (every process takes part). Saving needs
        it where peft reads live weights instead of the state dict: prompt tuning's virtual-token embeddings."""
        if not (self.enabled and self.strategy == "fsdp" and self.deepspeed is None):
            yield
            return
        model.unshard()
        try:
            yield
        finally:
            model.reshard()


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules transformers says must not be split across devices (`_no_split_modules`): FSDP's shard units."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names]


@contextlib.contextmanager
def session(settings: DistributedSettings):
    """Join the process group when started by a launcher; leave it at the end. Yields a `Distributed`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Distributed()
        return
    if settings.num_processes not in (1, world):
        raise UserError(f"--num-processes {settings.num_processes}, but the launcher started {world} processes")
    settings.num_processes = world
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    started_here = not torch.distributed.is_initialized()
    if started_here:
        torch.distributed.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(minutes=30))
    dist = Distributed(world, rank, local_rank, settings.strategy, settings.deepspeed,
                       _deepspeed_accelerator(settings) if settings.deepspeed else None)
    try:
        with _quiet_console(rank != 0):
            yield dist
    finally:
        if started_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _quiet_console(quiet: bool):
    """Only the main process talks: the others would repeat every note, bar and table. The console is restored
    when the run ends normally; after an error it stays quiet, so only the main process prints that error."""
    saved = console.out.quiet, console.err.quiet
    if quiet:
        console.out.quiet = console.err.quiet = True
    yield
    console.out.quiet, console.err.quiet = saved


# ---------------------------------------------------------------- DeepSpeed


def deepspeed_config(settings, micro_batch_size: int, grad_accum: int, max_grad_norm: float, on_gpu: bool) -> dict:
    """A DeepSpeed config for ZeRO stage 2 or 3 matching the run's batch, accumulation and clipping."""
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": int(settings.deepspeed.removeprefix("zero")), "overlap_comm": on_gpu},
        "steps_per_print": 10**9,
    }
    if settings.deepspeed == "zero3":
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if on_gpu and torch.cuda.is_bf16_supported():
        config["bf16"] = {"enabled": True}
    return config


def _deepspeed_accelerator(settings):
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    micro_batch = getattr(settings, "mini_batch_size", settings.batch_size)  # PPO updates on minibatches
    config = deepspeed_config(settings, micro_batch, getattr(settings, "grad_accum", 1),
                              getattr(settings, "max_grad_norm", 1.0), torch.cuda.is_available())
    return Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config),
                       gradient_accumulation_steps=config["gradient_accumulation_steps"])
