"""The recipe stages, one module a stage, and the registry that recipes name them from.

A stage is one object, a `Stage` (lifecycle/core.py), in a module of its own that imports the core and nothing
that imports it back. Registering it is all that is needed for recipes to name it, `plan` to check it, the run
to call it, and the report and metrics.json to show what it made:

    from llmcycle.lifecycle.stages import APART, Stage, register

    register(Stage("NAME", check, run, ...))

The contract (the fields of `Stage`; only the first three are required):
- `name`: the recipe's key (`- NAME: {options}`); the stage's folder is OUT/stages/NN-NAME[-VARIANT].
- `check(options, where, names, source)`: raise a one-line `UserError` starting with `where` (the recipe file and
  the stage's place) for bad options; `names` holds the variant names earlier stages made (for `from`), `source`
  the recipe file (for relative paths). `plan` calls it for every stage before anything runs.
- `run(run, step, folder)`: do the work in `folder` (outputs to temporary names first; a stage whose folder has
  no stage.json starts again) and add what it made to `run.variants` as `Variant(name, model, stage=NAME, ...)`.
  A variant's metrics are `{metric: {"mean", "ci95", "n"}}`; its cost a flat dict.
- `variant_role`: BASE (the recipe's model as it comes, scored by its own stage; forgetting is measured
  against the first), TUNED (the default: a model of its own, scored and probed by `eval`) or APART (scored by
  its own stage on data of its own: shown only in its own report section).
- `names_variant`: its `name` option (default: NAME) names one variant, unique, that later stages take `from`.
- `headline`: the metrics its variants are compared by when several models run side by side.
- `serves_adapters`: its variants' adapters go into the printed `llmcycle serve` command.
- `metrics_entry(variant, run) -> dict`: keys it adds to any variant's entry in metrics.json.
- `plots(metrics, variants) -> [(title, png_base64)]` and `cost_table(metrics, variants) -> html`: its parts of the
  report's plots and cost section, given the variants compared on the test data (not APART) and their metrics.json
  entries.
- `findings(metrics, variants) -> [(held, html)]`: its findings, given every variant. A finding that says one variant
  is better or worse than another reads the paired test on the same rows (metrics.json's `paired`, lifecycle/paired.py):
  `held` is True where it shows the course's effect, False where it shows the opposite, None where the 95% interval
  covers 0 (no measurable difference, said plainly).
- `section(metrics, variants) -> html`: its own report section ('' when it has nothing), given every variant.

The report lists the stages' parts in the registry's order; the built-in stages are registered below, in the
order of the lifecycle.
"""

from __future__ import annotations

from ..core import APART, BASE, STAGES, TUNED, Stage, register
from .align import ALIGN
from .baseline import BASELINE
from .deploy import DEPLOY
from .eval import EVAL
from .feedback import FEEDBACK
from .finetune import FINETUNE
from .rag import RAG
from .report import REPORT

__all__ = ["APART", "BASE", "STAGES", "TUNED", "Stage", "register"]

for _stage in (BASELINE, FINETUNE, EVAL, ALIGN, FEEDBACK, DEPLOY, RAG, REPORT):
    register(_stage)
