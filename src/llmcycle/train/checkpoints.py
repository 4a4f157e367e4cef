"""Checkpoints that resume exactly: weights, optimizer, scheduler, RNG states and the data position.

A checkpoint is written under a temporary name and renamed to `checkpoints/step-N` once complete, so a run
killed mid-write leaves only complete checkpoints behind. Weights are safetensors in the save_pretrained
layout (a checkpoint's `model/` or `adapter/` loads like a final one). Optimizer and scheduler states are
loaded with `torch.load(weights_only=True)`, which reads tensors and plain containers and runs no code.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .distributed import Distributed

PREFIX = "step-"


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted((p for p in found if (p / "trainer_state.json").is_file()), key=lambda p: int(p.name[len(PREFIX):]))


def save_weights(model, tokenizer, folder: Path, is_adapter: bool, dist: Distributed | None = None, within: str = "") -> dict | None:
    """save_pretrained into folder/model or folder/adapter; on several processes all gather, the main one writes.

    `within` names the submodule that is the model to save (PPO's policy inside its actor-critic). Returns the
    gathered full state dict when weights are sharded (on the main process), else None.
    """
    dist = dist or Distributed()
    full_state = dist.full_state_dict(model)  # a collective: every process calls it
    with dist.root_gathered(model):  # so is this
        if not dist.is_main:
            return None
        module, state = dist.unwrap(model), full_state
        if within:
            module = getattr(module, within)
            if state is not None:
                state = {name.removeprefix(within + "."): value for name, value in state.items() if name.startswith(within + ".")}
        folder = folder / ("adapter" if is_adapter else "model")
        kwargs = {} if state is None else {"state_dict": state}
        if is_adapter and len(getattr(module, "peft_config", {})) > 1:
            kwargs["selected_adapters"] = ["default"]  # the trained adapter, not an alignment run's frozen reference
        module.save_pretrained(folder, safe_serialization=True, **kwargs)
        tokenizer.save_pretrained(folder)
    return full_state


def save_extra(folder: Path, model, full_state: dict | None, extra, dist: Distributed) -> None:
    """Write the safetensors files `extra(unwrapped model, full state or None)` returns ({file name: tensors})."""
    from safetensors.torch import save_file

    for name, tensors in (extra(dist.unwrap(model), full_state) if extra else {}).items():
        save_file({key: value.contiguous() for key, value in tensors.items()}, folder / name)


def save(out: Path, step: int, model, tokenizer, is_adapter: bool, optimizer, scheduler, state: dict,
         extra=None, dist: Distributed | None = None, within: str = "") -> Path:
    """Write checkpoint `step`; `extra` adds files beside the weights (see `save_extra`; PPO's value head)."""
    dist = dist or Distributed()
    final = out / "checkpoints" / f"{PREFIX}{step}"
    staging = out / "checkpoints" / f".{PREFIX}{step}.tmp"
    if dist.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    full_state = save_weights(model, tokenizer, staging, is_adapter, dist, within)
    optimizer_state = dist.optimizer_state(model, optimizer)
    rng_per_process = dist.gather_objects(torch.get_rng_state())
    if dist.is_main:
        save_extra(staging, model, full_state, extra, dist)
        torch.save(optimizer_state, staging / "optimizer.pt")
        if scheduler is not None:  # PPO keeps its learning rate constant, with no scheduler
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "per_process": rng_per_process}, staging / "rng.pt")
        random_state = random.getstate()
        numpy_state = np.random.get_state()
        trainer_state = {
            **state,
            "python_rng": [random_state[0], list(random_state[1]), random_state[2]],
            "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        }
        (staging / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    dist.barrier()  # the checkpoint is complete before any process goes on (and might be killed)
    return final


def load_weights(folder: Path, model, is_adapter: bool) -> None:
    """The checkpoint's weights into an unwrapped model (before DDP or FSDP wrap it)."""
    from safetensors.torch import load_file

    if is_adapter:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter" / "adapter_model.safetensors"))
        return
    weights = {}
    for shard in sorted((folder / "model").glob("*.safetensors")):
        weights.update(load_file(shard))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    aliases = _tied_aliases(model)
    tied = {name for name in missing if any(other in weights for other in aliases.get(name, []))}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {sorted(set(missing) - tied)[:3]}")


def load_training_state(folder: Path, optimizer, scheduler, dist: Distributed | None = None, model=None) -> dict:
    """Everything but the weights: optimizer, scheduler, RNG states; returns the trainer state.

    Under FSDP the optimizer state is the full one `save` gathered; each process keeps its shard of it.
    """
    dist = dist or Distributed()
    dist.load_optimizer_state(model, optimizer, torch.load(folder / "optimizer.pt", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    per_process = rng.get("per_process") or []
    torch.set_rng_state(per_process[dist.rank] if len(per_process) == dist.world_size else rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((folder / "trainer_state.json").read_text())
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    return state


def _tied_aliases(model) -> dict[str, list[str]]:
    """Each parameter name -> the other names of the same tensor (save_pretrained writes a shared tensor once)."""
    groups: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    return {name: [other for other in group if other != name] for group in groups.values() for name in group}
