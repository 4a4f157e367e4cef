"""Adapters after training: merging LoRA weights into the base for deployment."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import UserError
from ..models import load_model


def merge_adapter(model: str, adapter: str | None, out: str, dtype: str = "float32") -> Path:
    """Load `model` (+ `adapter`), fold LoRA into the weights, and save a plain model folder at `out`."""
    from peft import PeftModel

    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{out} exists and is not empty")
    loaded = load_model(model, dtype=dtype, adapters=[("default", adapter)] if adapter else None, device=torch.device("cpu"))
    if not isinstance(loaded.model, PeftModel):
        raise UserError(f"{model} has no adapter to merge; pass --adapter DIR")
    if loaded.model.peft_config[loaded.adapters[0]].peft_type.value not in ("LORA", "ADALORA", "IA3", "LOHA", "LOKR"):
        raise UserError("only LoRA-style adapters merge into weights; prompt and prefix tuning keep their virtual tokens")
    merged = loaded.model.merge_and_unload()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
