"""The `deploy` stage: quantise a variant (llmcycle quantize --compare) and measure it against its float32 form on
the test data.

```yaml
- deploy: {from: full}                              # variant full+int8
- deploy: {name: int8, from: full, quantize: int8-weight}
```
"""

from __future__ import annotations

import html
from pathlib import Path

from ...deploy.compare import compare_quantized
from ...deploy.quantize import METHODS, canonical_method
from ...errors import UserError
from ..core import Run, Stage, Step, Variant, start_afresh
from ..report import mean, measured

NAME = "deploy"


def check_deploy(options: dict, where: str, names: set, source: str) -> None:
    """`from` an earlier variant, `quantize` int8 (the default) or a quantize method, `name` (default FROM+QUANTIZE)."""
    extra = set(options) - {"from", "quantize", "name"}
    if extra:
        raise UserError(f"{where} (deploy): unknown field '{sorted(extra)[0]}'; deploy takes from, quantize and name")
    try:
        canonical_method(str(options.get("quantize", "int8")))
    except UserError as exc:
        raise UserError(f"{where} (deploy): quantize must be int8 or one of {', '.join(METHODS)}") from exc
    if options.get("from") not in names:
        raise UserError(f"{where} (deploy): 'from' must name an earlier variant ({', '.join(sorted(names))})")


def run_deploy(run: Run, step: Step, folder: Path) -> None:
    """Quantise a variant into a model folder (llmcycle quantize --compare) and measure it against its float32 form."""
    variant = run.variants[step.options["from"]]
    label = str(step.options.get("quantize", "int8"))
    method = canonical_method(label)
    start_afresh(folder / "compare")
    result = compare_quantized(variant.model, run.data_options(run.test), run.settings(), run.recipe.metrics, str(folder / "compare"),
                               methods=[method], references=("float32",), resamples=1000)
    reference, form = result["forms"]["float32"], result["forms"][method]
    cost = {key: form[key] for key in ("size_on_disk_bytes", "load_s", "tokens_per_s", "peak_memory_bytes", "bytes_per_param",
                                       "planned_bytes_per_param")}
    cost.update(method=method, trainable_params=0, generation_time_s=form["generation_s"], float32_bytes=reference["size_on_disk_bytes"],
                float32_generation_s=reference["generation_s"], speedup=reference["generation_s"] / max(form["generation_s"], 1e-9),
                float32_tokens_per_s=reference["tokens_per_s"], float32_peak_memory_bytes=reference["peak_memory_bytes"],
                quality_change={name: summary["change"] for name, summary in form["metrics"].items() if "change" in summary})
    metrics = {name: {k: v for k, v in summary.items() if k != "change"} for name, summary in form["metrics"].items()}
    name = str(step.options.get("name") or f"{variant.name}+{label}")
    run.variants[name] = Variant(name, str(folder / "compare" / form["folder"]), NAME, metrics=metrics, cost=cost,
                                 predictions=str(folder / "compare" / form["predictions"]))


def deploy_table(metrics: dict, variants: list) -> str:
    """Each quantised variant against the float32 form of its source, measured in the same run (llmcycle quantize --compare)."""
    rows = "".join(_row(name, entry, metrics) for name, entry in metrics.items() if "float32_bytes" in entry.get("cost", {}))
    if not rows:
        return ""
    return ("<h3>Deployment: what each byte saved cost</h3><table><tr><th>variant</th><th>method</th><th>size on disk</th>"
            "<th>bytes / parameter (planned)</th><th>load time</th><th>output tokens/s (float32)</th><th>peak memory (float32)</th>"
            f"<th>quality: change [paired 95% interval]</th></tr>{rows}</table><p class='ci'>measured against the float32 form of the "
            "source in the same run, on the same rows; peak memory is the rise during load and generation (CUDA allocations, or "
            "resident memory on a CPU)</p>")


def _row(name: str, entry: dict, metrics: dict) -> str:
    cost, source = entry["cost"], metrics.get(name.rsplit("+", 1)[0], {})
    quality = next((m for m in ("rougeL", "bleu", "exact_match", "toxicity") if mean(entry, m) is not None), None)
    before, after = (mean(source, quality), mean(entry, quality)) if quality else (None, None)
    paired = cost.get("quality_change", {}).get(quality)
    change = (f"{quality} {after:.4f}: {paired['absolute']:+.4f} [{paired['ci95'][0]:+.4f}, {paired['ci95'][1]:+.4f}] against float32"
              if paired else "-" if before is None or after is None else f"{quality} {before:.4f} &rarr; {after:.4f} ({after - before:+.4f})")
    cells = [
        html.escape(cost.get("method", "-")),
        f"{cost['size_on_disk_bytes'] / 2**20:,.2f} MiB ({cost['float32_bytes'] / cost['size_on_disk_bytes']:.2f}x smaller)",
        f"{measured(cost, 'bytes_per_param', '.3f')} ({measured(cost, 'planned_bytes_per_param', '.3f')})",
        measured(cost, "load_s", ".2f", unit=" s"),
        f"{measured(cost, 'tokens_per_s', ',.1f')} ({measured(cost, 'float32_tokens_per_s', ',.1f')})",
        f"{measured(cost, 'peak_memory_bytes', ',.1f', 2**20)} ({measured(cost, 'float32_peak_memory_bytes', ',.1f', 2**20)}) MiB",
        change,
    ]
    return f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>"


DEPLOY = Stage(NAME, check_deploy, run_deploy, cost_table=deploy_table)
