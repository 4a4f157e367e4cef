"""The choices training offers, and the config groups composed into each training verb's config (flags stay flat).

Each choice is one `Literal` type, read wherever it is offered: the generated flags (click.Choice from
`typing.get_args`), the configs' checks, the trainers and `plan memory`. This module imports nothing heavy, so
the CLI and the planner read it without torch.

    RunSettings          seed, checkpoints, tracking: every trainer
    ModelSettings        weights dtype, remote code: trainers that load a model
    DataSettings         how rows are read: hub split, bad rows
    LoRASettings         rank, alpha and targets: fine-tuning, DPO, PPO and `plan memory`
    DistributedSettings  processes, DDP/FSDP, DeepSpeed (train/distributed.py)

A verb's config subclasses the groups it needs; `config.field_types` lists its own fields first, then each group's,
so YAML files and --help start with model and data. Bounds and choices are declared with the field
(`at_least`, `above`, `Literal`) and checked by `config.check_fields`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import above, at_least

Method = Literal["full", "lora", "qlora", "prompt-tuning", "prefix-tuning", "freeze"]
"""Fine-tuning methods (train/methods.py)."""
PlannedMethod = Literal["full", "lora", "qlora", "prompt-tuning", "prefix-tuning"]
"""The methods `plan memory` counts: every one but freeze, whose trained share depends on --trainable."""
Strategy = Literal["ddp", "fsdp"]
"""How several training processes hold the model: whole in each (DDP) or sharded (FSDP)."""
DeepSpeedStage = Literal["zero2", "zero3"]
"""DeepSpeed ZeRO stages a run can train with (--deepspeed)."""
PlannedSharding = Literal["ddp", "zero1", "zero2", "zero3", "fsdp"]
"""What `plan memory --strategy` shards: the ZeRO paper's stages, and FSDP's full sharding (the same as stage 3)."""
LRSchedule = Literal["linear", "cosine", "constant"]
"""Learning rate after warm-up (transformers' `get_scheduler` names)."""
ComputeDtype = Literal["float32", "bfloat16", "float16"]
"""A floating-point dtype by its torch name."""
Dtype = Literal["auto", ComputeDtype]
"""Weights dtype; auto is float32 weights, with bfloat16 autocast on a GPU."""
Precision = Literal["fp32", "mixed", "bf16", "fp16"]
"""What `plan memory` counts: fp32, mixed (16-bit weights and gradients, fp32 master weights), or pure 16-bit."""
Tracker = Literal["tensorboard", "mlflow", "none"]
AlignMethod = Literal["ppo", "dpo"]
"""`llmcycle align --method`: PPO against a reward, or DPO on preference pairs."""
PolicyTuning = Literal["lora", "full"]
"""What of an alignment policy trains: a LoRA adapter (a new one, or the adapter run's), or every weight."""
Architecture = Literal["t5", "bart", "gpt2", "llama"]
"""Models built new from a config (train/scratch.py); t5 and bart are encoder-decoder."""


@dataclass
class RunSettings:
    """Fields every training run has."""

    seed: int = 0
    """Seed for initialisation, data order, dropout and sampling."""
    save_every: int | None = at_least(None, 1)
    """Write a checkpoint every N steps."""
    report_to: list[Tracker] = field(default_factory=list)
    """Also send the log to tensorboard (OUT/tensorboard) or mlflow (repeatable); log.jsonl is always written."""


@dataclass
class ModelSettings:
    """How the model to train is loaded."""

    dtype: Dtype = "auto"
    """auto: float32 weights, with bfloat16 autocast on a GPU; or float32, bfloat16, float16 weights."""
    trust_remote_code: bool = False
    """Allow code shipped with a hub model to run."""


@dataclass
class DataSettings:
    """How rows are read."""

    split: str | None = None
    """Split of a hub dataset."""
    skip_bad_rows: bool = False
    """Skip unusable rows instead of stopping."""


@dataclass
class LoRASettings:
    """Low-rank adapters: one meaning of every field wherever LoRA is trained or planned."""

    lora_rank: int = at_least(8, 1)
    """LoRA rank r."""
    lora_alpha: float = above(16.0, 0)
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    lora_targets: str = "attention"
    """attention (every attention projection), all-linear, or comma-separated module names (q,v)."""
