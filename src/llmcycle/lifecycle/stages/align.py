"""The `align` stage: PPO against a reward (the default), or DPO on preference rows, from an earlier variant.

```yaml
- align: {name: lora+ppo, from: lora, reward: [toxicity], max_steps: 20}    # the LoRA adapter keeps training
- align: {name: dpo, method: dpo, from: lora, data: prefs.jsonl, beta: 0.1}  # DPO on preference rows
```
PPO samples from the recipe's training prompts, or from `data` (a file or a synth spec; only its prompts are read),
so a run can give PPO prompts where the behaviour it should unlearn shows. Its other options are `llmcycle align`'s
(PPOConfig or DPOConfig). An adapter variant keeps training its adapter, against itself as it was; without `from`,
the recipe's model is aligned.
"""

from __future__ import annotations

import html
from pathlib import Path

from ... import config as configs
from ...align.dpo import DPOConfig, dpo
from ...align.ppo import PPOConfig, ppo
from ...errors import UserError
from ...evaluate.compare import NO_DIFFERENCE
from ..core import (
    SMOKE_STEPS,
    Run,
    Stage,
    Step,
    Variant,
    check_data_spec,
    start_afresh,
    training_cost,
)
from ..report import change_text, held, mean, oriented_pair, pair_outcome

NAME = "align"
ALIGN_KEYS = ("name", "from", "method", "data")
"""The stage's own keys; the rest are the PPO or DPO config's."""


def align_config(options: dict, where: str):
    """The PPO or DPO config class of an align stage (`method: ppo`, the default, or `dpo`) and its own fields."""
    method = options.get("method", "ppo")
    if method not in ("ppo", "dpo"):
        raise UserError(f"{where} (align): method must be ppo or dpo (got {method!r})")
    cls = PPOConfig if method == "ppo" else DPOConfig
    return cls, configs.checked(cls, {k: v for k, v in options.items() if k not in ALIGN_KEYS}, f"{where} (align)")


def check_align(options: dict, where: str, names: set, source: str) -> None:
    start = options.get("from")
    if start is not None and start not in names:
        raise UserError(f"{where} (align): 'from: {start}' names no earlier variant ({', '.join(sorted(names))})")
    cls, fields_ = align_config(options, where)
    if cls is DPOConfig and "data" not in options:
        raise UserError(f"{where} (align): method dpo needs data: preference rows (prompt, chosen, rejected)")
    if "data" in options:
        check_data_spec(options["data"], source or where, f"{where} (align)")
    cls(**fields_, model="m", data="d", out="o").validate()


def run_align(run: Run, step: Step, folder: Path) -> None:
    """PPO (or DPO) from a variant: an adapter variant keeps training its adapter, against itself as it was."""
    cls, fields_ = align_config(step.options, "align")
    source = run.variants[step.options["from"]].model if step.options.get("from") else run.recipe.model
    if cls is DPOConfig:
        cfg, train = cls(**fields_, model=source, data=run.data_file(f"{step.folder}-pairs", step.options["data"]),
                         out=str(folder / "run")), dpo
        if run.smoke:
            cfg.max_steps, cfg.batch_size, cfg.save_every = SMOKE_STEPS, 4, None
    else:
        prompts = run.data_file(f"{step.folder}-prompts", step.options["data"]) if "data" in step.options else run.train
        cfg, train = cls(**fields_, model=source, data=prompts, out=str(folder / "run"), template=run.recipe.template), ppo
        if run.smoke:
            cfg.max_steps, cfg.batch_size, cfg.mini_batch_size, cfg.save_every = SMOKE_STEPS, 4, 2, None
    start_afresh(folder / "run")
    cost = training_cost(train(cfg)) | {"from": step.options.get("from", "base")}
    run.variants[step.name] = Variant(step.name, str(folder / "run"), NAME, cost=cost, log=str(folder / "run" / "log.jsonl"))


def alignment_detoxifies(metrics: dict, variants: list) -> list:
    """A finding per aligned variant (PPO or DPO): its toxicity against the variant it started from, by the paired
    test on the same rows; it lowers toxicity only where the whole 95% interval of the change is below 0."""
    found = []
    for variant in (v for v in variants if v.stage == NAME):
        name = variant.name
        source = metrics.get(name, {}).get("cost", {}).get("from", name.split("+")[0])
        source = source if source in metrics and source != name else None
        if source is None or "toxicity" not in metrics.get(name, {}) or "toxicity" not in metrics[source]:
            continue
        found.append(_toxicity_finding(metrics, name, source))
    return found


def _toxicity_finding(metrics: dict, name: str, source: str):
    method = html.escape(str(metrics[name].get("cost", {}).get("method", "alignment")).upper())
    pair = oriented_pair(metrics, name, source, "toxicity")
    result = pair_outcome("toxicity", pair)
    opening = {"better": f"{method} lowers toxicity", "worse": f"{method} raises toxicity",
               NO_DIFFERENCE: f"This run does not show {method} lowering toxicity"}[result]
    numbers = (f"{html.escape(source)} {mean(metrics[source], 'toxicity'):.4f} -> {html.escape(name)} "
               f"{mean(metrics[name], 'toxicity'):.4f}, {change_text(pair, 4)}")
    if mean(metrics[name], "rougeL") is not None and mean(metrics[source], "rougeL") is not None:
        numbers += (f"; ROUGE-L {mean(metrics[source], 'rougeL'):.3f} -> {mean(metrics[name], 'rougeL'):.3f}, "
                    f"{change_text(oriented_pair(metrics, name, source, 'rougeL'))}")
    return held(result), f"{opening}: {numbers}."


ALIGN = Stage(NAME, check_align, run_align, names_variant=True, serves_adapters=True, findings=alignment_detoxifies)
