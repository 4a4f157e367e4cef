"""`llmcycle quantize --compare DATA`: what each byte saved cost, measured on real folders.

Every form is a folder written to disk and loaded back the way a user would load it: the unquantised model in
float32 and bfloat16 (save_pretrained), and each quantised form (llmcycle.deploy.quantize). For each:

* size on disk: the bytes of its weight files, and the bytes of tensor data alone (the safetensors header,
  which for torchao holds a JSON description of every quantised tensor, left out) per parameter of the
  unquantised model, next to the planner's figure (llmcycle.plan.memory) for that format;
* load time: `llmcycle.models.load_model` of the folder, after one untimed load that pays the imports;
* tokens/s: completion tokens (the outputs re-tokenised) over the wall time of generating the data's prompts;
* peak memory: on CUDA the most memory torch allocated during load and generation; on a CPU the largest rise
  of the process's resident memory above where it stood before the load, sampled every 5 ms;
* quality: the eval metrics with 95% bootstrap intervals, and each form's change against the first form with a
  paired bootstrap interval and p-value (every form answers the same rows; llmcycle.evaluate.stats.paired_change).

The planned figures come from the planner (plan.memory.weight_bytes and quantized_weight_bytes): float32 and
bfloat16 weights, NF4 as QLoRA stores its frozen base, int8 one byte a weight plus one scale per output row,
int4 half a byte plus a bfloat16 scale and zero point per group of 128; other parameters (embeddings, norms,
the output head) stay in the model's dtype.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from pathlib import Path

import torch

from ..console import note, print_table
from ..errors import UserError
from ..evaluate import MetricInput, parse_metrics, print_comparison
from ..evaluate.forgetting import add_changes
from ..evaluate.metrics import statistics
from ..evaluate.stats import bootstrap_summary
from ..generate.engine import GenerationSettings, generate
from ..generate.predict import prediction_records
from ..models import load_base, load_model, locate, pick_device
from ..outputs import publish, staging_beside, write_json, write_jsonl
from ..plan.memory import quantized_weight_bytes, shape_from_model, weight_bytes
from ..quantization import BNB_METHODS, require_hardware
from .merge import merge_adapter
from .quantize import METHODS, canonical_method, check_output, quantize, weight_file_bytes

REFERENCES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def available_methods() -> list[str]:
    """The quantisation methods this machine's hardware and installed libraries can run."""
    found = []
    for method in METHODS:
        try:
            require_hardware(method, pick_device())
            found.append(method)
        except UserError:
            pass
    return found


def compare_quantized(model: str, data, settings, metrics: list[str], out: str, *, methods: list[str] | None = None,
                      references: tuple[str, ...] = ("float32", "bfloat16"), resamples: int = 1000) -> dict:
    """Write every form of `model` under OUT/forms/, measure each on `data` (DataOptions); OUT/comparison.json.

    Returns what comparison.json holds: `{"model", "device", "peak_memory_measure", "forms": {form: {...}}}`, each
    form with its costs, size check and metrics; its `folder` and `predictions` are relative to OUT.
    """
    metrics = parse_metrics(metrics)
    settings.validate()
    methods = [canonical_method(m) for m in methods] if methods else available_methods()
    for method in methods:
        require_hardware(method, pick_device())
    target = check_output(out)
    with staging_beside(target) as staging:
        result = _run(model, data, settings, metrics, staging / "out", methods, references, resamples)
        publish(staging / "out", target)
    print_results(result)
    return result


def _run(model, data, settings, metrics, folder: Path, methods, references, resamples) -> dict:
    source = _merged_source(model, folder.parent)
    forms = {name: _write_reference(source, REFERENCES[name], folder / "forms" / name) for name in references}
    for method in methods:
        forms[method] = quantize(source, str(folder / "forms" / method), method).out
    note(f"wrote {len(forms)} forms ({', '.join(forms)}); measuring each on the test data")
    _warm_up(next(iter(forms.values())), settings)
    measured = {name: measure(path, data, settings, metrics, folder / "predictions" / f"{name}.jsonl", resamples,
                              dtype=name if name in REFERENCES else "auto") for name, path in forms.items()}
    statistics = {name: entry.pop("statistics") for name, entry in measured.items()}
    quality = add_changes({name: entry.pop("metrics") for name, entry in measured.items()}, statistics, resamples, settings.seed)
    shape = shape_from_model(source)
    for name, entry in measured.items():
        entry["metrics"] = quality[name]
        entry.update(size_check(shape, name, forms[name]))
        entry["folder"], entry["predictions"] = (str(Path(entry[key]).relative_to(folder)) for key in ("folder", "predictions"))
    result = {"model": model, "device": pick_device().type, "peak_memory_measure": _memory_measure(), "forms": measured}
    write_json(folder / "comparison.json", result)
    return result


def _merged_source(model: str, scratch: Path) -> str:
    """`model` itself, or with its adapter merged into a scratch folder: every form starts from the same weights."""
    if not locate(model).adapters:
        return model
    note(f"{model} carries an adapter; merging it first, so every form holds the same weights")
    return str(merge_adapter(model, None, str(scratch / "merged")))


def _write_reference(source: str, dtype: torch.dtype, folder: Path) -> Path:
    loaded = load_base(locate(source).base, torch_dtype=dtype)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def _warm_up(folder: Path, settings) -> None:
    """One untimed load and a short generation, so the first form measured does not pay for imports."""
    loaded = load_model(str(folder), dtype="auto")
    generate(loaded, ["a"], GenerationSettings(max_new_tokens=2, batch_size=1, seed=settings.seed), description="warm-up")


class PeakMemory:
    """Peak memory between start and stop: CUDA allocations, or the process's resident-set rise on a CPU."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.peak = self.before = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            self.before = self.peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())

    @property
    def rise(self) -> int:
        return self.peak - self.before


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_measure() -> str:
    return "CUDA memory allocated" if torch.cuda.is_available() else "rise of the process's resident memory (CPU)"


def measure(folder: Path, data, settings, metrics: list[str], predictions: Path, resamples: int, dtype: str = "auto") -> dict:
    """Load `folder` as llmcycle's verbs do, generate on `data`, score; costs and metrics of one form."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        loaded = load_model(str(folder), dtype=dtype)
        load_s = time.perf_counter() - started
        examples = data.load(loaded, settings.seed, require_completion=True).examples
        prompts = [e.prompt for e in examples]
        started = time.perf_counter()
        outputs = generate(loaded, prompts, settings, description=folder.name)
        generation_s = time.perf_counter() - started
    write_jsonl(predictions, prediction_records(examples, prompts, outputs))
    tokens = sum(len(ids) for ids in loaded.tokenizer(outputs, add_special_tokens=False)["input_ids"])
    inputs = MetricInput(outputs, [e.completion for e in examples], prompts, [e.where for e in examples], loaded, settings.batch_size)
    per_row = statistics(inputs, metrics)
    return {
        "folder": str(folder), "predictions": str(predictions), "size_on_disk_bytes": weight_file_bytes(folder),
        "load_s": round(load_s, 4), "generation_s": round(generation_s, 4), "output_tokens": tokens,
        "tokens_per_s": round(tokens / generation_s, 2) if generation_s > 0 else None,
        "peak_memory_bytes": memory.rise, "statistics": per_row,
        "metrics": {name: bootstrap_summary(statistic, resamples, settings.seed) for name, statistic in per_row.items()},
    }


# ---------------------------------------------------------------- sizes against the planner


def tensor_bytes(folder: Path) -> int:
    """Bytes of tensor data in the folder's safetensors files: each file less its 8-byte length and JSON header."""
    total = 0
    for path in Path(folder).glob("*.safetensors"):
        with open(path, "rb") as handle:
            (header,) = struct.unpack("<Q", handle.read(8))
        total += path.stat().st_size - 8 - header
    return total


def planned_bytes(shape, form: str, dtype: torch.dtype) -> tuple[float | None, str]:
    """The planner's bytes for `form` of a model of `shape` (plan.memory), and where the figure comes from."""
    if form in REFERENCES:
        return shape.total_params * weight_bytes("fp32" if form == "float32" else "bf16"), "planner"
    planned = quantized_weight_bytes(shape, form, DTYPE_BYTES[dtype])
    return planned, "planner" if planned is not None else "none"


def size_check(shape, form: str, folder: Path) -> dict:
    """Real bytes per parameter (of the unquantised model) against the planned figure."""
    config = json.loads((Path(folder) / "config.json").read_text())
    dtype = REFERENCES.get(form) or getattr(torch, str(config.get("dtype") or config.get("torch_dtype") or "float32"))
    real = tensor_bytes(folder)
    planned, basis = planned_bytes(shape, form, torch.bfloat16 if form in BNB_METHODS else dtype)
    return {
        "params": shape.total_params, "tensor_bytes": real, "bytes_per_param": round(real / shape.total_params, 4),
        "planned_bytes_per_param": None if planned is None else round(planned / shape.total_params, 4),
        "planned_from": basis, "real_over_planned": None if planned is None else round(real / planned, 4),
    }


# ---------------------------------------------------------------- the tables


def print_results(result: dict) -> None:
    forms = result["forms"]
    first_name, first = next(iter(forms.items()))
    metric = next(iter(first["metrics"]))
    rows = []
    for name, entry in forms.items():
        planned = entry["planned_bytes_per_param"]
        rows.append((
            name, f"{entry['size_on_disk_bytes'] / 2**20:,.2f}", f"{first['size_on_disk_bytes'] / entry['size_on_disk_bytes']:.2f}x",
            f"{entry['bytes_per_param']:.3f}", "-" if planned is None else f"{planned:.3f} ({entry['planned_from']})",
            f"{entry['load_s']:.2f}", "-" if entry["tokens_per_s"] is None else f"{entry['tokens_per_s']:.1f}",
            f"{entry['peak_memory_bytes'] / 2**20:,.1f}", _paired(entry["metrics"][metric].get("change")),
        ))
    print_table(f"quantised forms of {result['model']} on {result['device']}",
                ["form", "size on disk (MiB)", f"smaller than {first_name}", "bytes/param", "planned bytes/param",
                 "load (s)", "output tokens/s", "peak memory (MiB)", f"{metric} change, paired 95%"], rows)
    note(f"peak memory: {result['peak_memory_measure']}, during load and generation")
    print_comparison("quality of each form", {name: entry["metrics"] for name, entry in forms.items()})


def _paired(change: dict | None) -> str:
    if not change:
        return "-"
    low, high = change["ci95"]
    return f"{change['absolute']:+.4f} [{low:+.4f}, {high:+.4f}]"
