"""The `deploy` stage of a recipe: quantise a variant (llmcycle quantize --compare) and measure it against its
float32 form on the test data.

```yaml
- deploy: {from: full}                              # variant full+int8
- deploy: {name: int8, from: full, quantize: int8-weight}
```
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def check_deploy(options: dict, where: str, names: set[str]) -> None:
    """`from` an earlier variant, `quantize` int8 (the default) or a quantize method, `name` (default FROM+QUANTIZE)."""
    extra = set(options) - {"from", "quantize", "name"}
    if extra:
        raise UserError(f"{where} (deploy): unknown field '{sorted(extra)[0]}'; deploy takes from, quantize and name")
    from ..deploy.quantize import METHODS, canonical_method

    try:
        canonical_method(str(options.get("quantize", "int8")))
    except UserError as exc:
        raise UserError(f"{where} (deploy): quantize must be int8 or one of {', '.join(METHODS)}") from exc
    if options.get("from") not in names:
        raise UserError(f"{where} (deploy): 'from' must name an earlier variant ({', '.join(sorted(names))})")


def run_deploy(run, step, folder: Path) -> None:
    """Quantise a variant into a model folder (llmcycle quantize --compare) and measure it against its float32 form."""
    import shutil

    from ..deploy.compare import compare_quantized
    from ..deploy.quantize import canonical_method

    variant = run.variants[step.options["from"]]
    label = str(step.options.get("quantize", "int8"))
    method = canonical_method(label)
    shutil.rmtree(folder / "compare", ignore_errors=True)  # an interrupted stage starts again
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
    from .recipes import Variant

    run.variants[name] = Variant(name, str(folder / "compare" / form["folder"]), "deploy", metrics=metrics, cost=cost,
                                 predictions=str(folder / "compare" / form["predictions"]))
