"""The `finetune` stage: instruction fine-tuning of the recipe's model on the train data, one variant a stage.

```yaml
- finetune: {name: lora, method: lora, lora_rank: 16, lr: 3.0e-3, epochs: 2}
```
Its options are `llmcycle finetune`'s (FinetuneConfig), but for the model, data and folders, which come from the
recipe. A validation curve on the test data is logged ten times a run, for the report's loss plot.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch

from ... import config as configs
from ...console import note
from ...data.io import read_rows
from ...errors import UserError
from ...evaluate.compare import NO_DIFFERENCE
from ...train.finetune import FinetuneConfig, finetune
from ..core import (
    BASE,
    SMOKE_STEPS,
    Run,
    Stage,
    Step,
    Variant,
    start_afresh,
    training_cost,
    with_role,
)
from ..report import best, change_text, held, mean, oriented_pair, pair_outcome, png, pyplot

NAME = "finetune"


def check_finetune(options: dict, where: str, names: set, source: str) -> None:
    fields_ = {k: v for k, v in options.items() if k != "name"}
    for taken in ("model", "data", "out", "eval_data"):
        if taken in fields_:
            raise UserError(f"{where} (finetune): '{taken}' comes from the recipe, not the stage")
    FinetuneConfig(**configs.checked(FinetuneConfig, fields_, f"{where} (finetune)"), model="m", data="d", out="o").validate()


def run_finetune(run: Run, step: Step, folder: Path) -> None:
    fields_ = {k: v for k, v in step.options.items() if k != "name"}
    cfg = FinetuneConfig(**configs.checked(FinetuneConfig, fields_, "finetune"), model=run.recipe.model, data=run.train,
                         eval_data=run.test, out=str(folder / "run"), template=run.recipe.template)
    if run.smoke:
        cfg.max_steps, cfg.save_every, cfg.eval_every = SMOKE_STEPS, None, None
        if cfg.method == "qlora" and not torch.cuda.is_available():
            note("smoke run without CUDA: qlora runs as lora")
            cfg.method = "lora"
    elif cfg.eval_every is None:
        cfg.eval_every = max(1, _steps(cfg, run) // 10)  # a validation curve for the report
    start_afresh(folder / "run")
    metrics = finetune(cfg)
    run.variants[step.name] = Variant(step.name, str(folder / "run"), NAME, cost=training_cost(metrics), log=str(folder / "run" / "log.jsonl"))


def _steps(cfg: FinetuneConfig, run: Run) -> int:
    """The optimizer steps `finetune` will run, counted as it counts them (rows of any format, rounded up)."""
    rows = len(read_rows(run.train)[0])
    return cfg.max_steps or math.ceil(math.ceil(rows / cfg.batch_size) * cfg.epochs / cfg.grad_accum)


# ---------------------------------------------------------------- what it adds to the report


def tuning_findings(metrics: dict, variants: list) -> list:
    found = [_tuning_beats_prompting(metrics, variants), *_each_method(metrics, variants), _lora_near_full(metrics)]
    return [finding for finding in found if finding]


def _tuned(variants: list) -> list:
    return [v for v in variants if v.stage == NAME]


BEATS_WORDS = {"better": "beats", "worse": "falls below", NO_DIFFERENCE: "makes no measurable difference against"}


def _tuning_beats_prompting(metrics: dict, variants: list):
    """The best tuned variant against the best prompt, by the paired test on the same rows."""
    prompted = best(metrics, [v.name for v in with_role(variants, BASE)])
    tuned = best(metrics, [v.name for v in _tuned(variants)])
    if not prompted or not tuned:
        return None
    pair = oriented_pair(metrics, tuned[0], prompted[0], "rougeL")
    result = pair_outcome("rougeL", pair)
    return held(result), (f"Fine-tuning {BEATS_WORDS[result]} prompting: best tuned variant <b>{html.escape(tuned[0])}</b> ROUGE-L "
                          f"{tuned[1]:.3f} against the best prompt <b>{html.escape(prompted[0])}</b> {prompted[1]:.3f}, {change_text(pair)}.")


METHOD_NOTES = {
    "prompt-tuning": " Prompt tuning needs scale: Lester et al. (2021) find it matches full fine-tuning only near 10B "
                     "parameters, and lags far behind on small models, as here.",
    "prefix-tuning": " Prefix tuning, like prompt tuning, trains few parameters and is known to lag on small models.",
}


PLACE_WORDS = {"better": "above", "worse": "below", NO_DIFFERENCE: "no measurable difference from"}


def _each_method(metrics: dict, variants: list) -> list:
    """A finding for every tuned variant against zero-shot prompting, including those that did not help."""
    zero = mean(metrics.get("zero-shot", {}), "rougeL")
    if zero is None:
        return []
    return [finding for finding in (_against_zero_shot(metrics, variant.name, zero) for variant in _tuned(variants)) if finding]


def _against_zero_shot(metrics: dict, name: str, zero: float):
    entry = metrics.get(name, {})
    tuned = mean(entry, "rougeL")
    if tuned is None:
        return None
    low, high = entry["rougeL"]["ci95"]
    pair = oriented_pair(metrics, name, "zero-shot", "rougeL")
    result = pair_outcome("rougeL", pair)
    method = entry.get("cost", {}).get("method", name)
    caveat = METHOD_NOTES.get(method, "") if result != "better" else ""
    return held(result), (f"<b>{html.escape(name)}</b> ({html.escape(str(method))}) scores ROUGE-L {tuned:.3f} [{low:.3f}, {high:.3f}], "
                          f"{PLACE_WORDS[result]} zero-shot prompting ({zero:.3f}): {change_text(pair)}.{caveat}")


NEAR_FULL = 0.9
"""LoRA 'comes close to' full fine-tuning when it keeps this share of its ROUGE-L (the paired ratio's whole interval)."""


def _lora_near_full(metrics: dict):
    """LoRA's ROUGE-L as a share of full fine-tuning's, with the ratio's paired interval on the same rows: close where
    the whole interval is at least NEAR_FULL, short where it is all below, and this run cannot tell otherwise."""
    lora = next((n for n in metrics if n.lower().startswith("lora") and "+" not in n), None)
    if "full" not in metrics or lora is None or mean(metrics["full"], "rougeL") in (None, 0) or mean(metrics[lora], "rougeL") is None:
        return None
    share = metrics[lora]["cost"].get("trainable_share", 0)
    ratio = (oriented_pair(metrics, lora, "full", "rougeL") or {}).get("ratio") or {}
    low, high = ratio.get("ci95") or (None, None)
    if ratio.get("value") is None or low is None or high is None:
        value = mean(metrics[lora], "rougeL") / mean(metrics["full"], "rougeL")
        return None, (f"LoRA keeps {value:.0%} of full fine-tuning's ROUGE-L while training {share:.2%} of the parameters; "
                      "no paired test (the two were not scored on the same rows), so this run cannot tell whether it comes close.")
    result = True if low >= NEAR_FULL else False if high < NEAR_FULL else None
    opening = {True: "LoRA comes close to full fine-tuning", False: "LoRA falls short of full fine-tuning",
               None: "This run cannot tell whether LoRA comes close to full fine-tuning"}[result]
    where = {True: "all at or above", False: "all below", None: "an interval either side of"}[result]
    return result, (f"{opening}: {ratio['value']:.0%} of its ROUGE-L [{low:.0%}, {high:.0%}], paired over the same rows ({where} "
                    f"{NEAR_FULL:.0%}), while training {share:.2%} of the parameters.")


def loss_curves(metrics: dict, variants: list) -> list:
    runs = [v for v in _tuned(variants) if v.log and Path(v.log).is_file()]
    if not runs:
        return []
    figure, axis = pyplot().subplots(figsize=(6, 3.6))
    for variant in runs:
        records = [json.loads(line) for line in Path(variant.log).read_text().splitlines()]
        axis.plot([r["step"] for r in records], [r["loss"] for r in records], label=f"{variant.name} train")
        evals = [r for r in records if "eval_loss" in r]
        if evals:
            axis.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "--", marker="o", label=f"{variant.name} validation")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.legend(fontsize=7)
    return [png(figure, "Training and validation loss")]


FINETUNE = Stage(NAME, check_finetune, run_finetune, names_variant=True, serves_adapters=True, findings=tuning_findings,
                 plots=loss_curves)
