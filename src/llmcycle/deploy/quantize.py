"""Deployment check: int8 dynamic quantisation of a model's linear layers, and what it costs in quality.

Dynamic quantisation stores linear weights as int8 and quantises activations on the fly: a CPU serving
option that needs no calibration data. We use torch's eager `quantize_dynamic` (deprecated in favour of
torchao, whose int8 path targets GPUs and compiled graphs; the eager one still runs as-is on any CPU).
The quantised model is measured in memory (size, generation time, scores) rather than written: its packed
weights have no safetensors form that plain transformers loads.
"""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import torch

from ..evaluate import MetricInput, score
from ..generate.engine import GenerationSettings, generate
from ..models import LoadedModel, load_model
from ..outputs import write_jsonl


def state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")  # the same deprecation, as a UserWarning
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def quantize_and_measure(model_spec: str, test_data, settings: GenerationSettings, metrics: list[str], folder: Path) -> dict:
    """Generate on `test_data` (DataOptions) with the float32 model and its int8 version; returns int8 metrics and costs."""
    loaded = load_model(model_spec, dtype="float32", device=torch.device("cpu"))
    if loaded.adapters:
        loaded.model = loaded.model.merge_and_unload()
    examples = test_data.load(loaded, settings.seed, require_completion=True).examples
    prompts = [e.prompt for e in examples]
    started = time.perf_counter()
    generate(loaded, prompts, settings, description="float32")
    float_seconds = time.perf_counter() - started
    quantized = LoadedModel(quantize_int8(loaded.model), loaded.tokenizer, loaded.kind, model_spec)
    started = time.perf_counter()
    predictions = generate(quantized, prompts, settings, description="int8")
    int8_seconds = time.perf_counter() - started
    records = [{"prompt": p, "prediction": o, "reference": e.completion} for p, o, e in zip(prompts, predictions, examples)]
    path = folder / "predictions.int8.jsonl"
    write_jsonl(path, records)
    data = MetricInput(predictions, [e.completion for e in examples], prompts, [e.where for e in examples])
    return {
        "metrics": score(data, metrics, seed=settings.seed),
        "cost": {
            "size_on_disk_bytes": state_bytes(quantized.model),
            "float32_bytes": state_bytes(loaded.model),
            "wall_time_s": int8_seconds,
            "float32_generation_s": float_seconds,
            "speedup": float_seconds / max(int8_seconds, 1e-9),
            "trainable_params": 0,
        },
        "predictions": str(path),
    }
