"""Adapters after training: merging LoRA weights into the base for deployment."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..models import load_model
from ..outputs import publish, staging_beside


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
    with staging_beside(target) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
        publish(staging, target)
    return target
