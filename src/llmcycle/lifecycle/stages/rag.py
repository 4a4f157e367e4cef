"""The `rag` stage: every variant so far answers the test questions again, with retrieval.

```yaml
- rag: {docs: docs/ , retriever: dense, k: 5, chunk_tokens: 200, overlap: 32, embedder: minilm}
- rag: {docs: {task: docs-qa, rows: 400, seed: 1}}      # the synthetic product's pages
- rag:                                                   # retrieval against fine-tuning, on questions of their own
    docs: {task: docs-qa, rows: 160, seed: 21}
    questions: {task: docs-qa, rows: 40, seed: 21}      # the test questions (default: the recipe's test data)
    variants: [zero-shot]                                # which earlier variants also answer with retrieval
    name: rag                                            # the first prompting variant with retrieval is called this
    finetune: {method: full, lr: 1.0e-3, epochs: 8}      # closed-book fine-tuning on the docs' other questions
```
`finetune` trains the recipe's model, without retrieval, on the docs task's questions that are not test questions
(for the synthetic product: other facts of the same pages, in the same answer format), and adds `docs-ft` (closed
book) and `docs-ft+rag`: whether tuning taught the facts, or only the format that retrieval then fills in.
The test rows must carry `question` and `answers` (as `synth --task docs-qa` writes them). The index is built once
in the stage's folder; each earlier variant V (the zero-shot prompt, fine-tuned and aligned runs) gains a
variant `V+rag` whose metrics are `rag eval`'s arm for the retriever (exact match, F1, ROUGE-L, answerable@k,
retrieval metrics, prompt tokens, misses split into retrieval and generation) and whose cost adds the index
time, prompt tokens and latencies to V's own (training time included), so prompting, fine-tuning, RAG and
fine-tuning + RAG stand side by side in one report; the cost also records V's closed-book exact match on the same
questions and prompt layout (`closed_book_exact_match`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from ... import config as configs
from ...data.io import read_rows
from ...data.synthetic_docs import docs_qa
from ...errors import UserError
from ...evaluate.compare import NO_DIFFERENCE, outcome
from ...models import ModelOptions
from ...outputs import write_jsonl
from ...rag.chunking import ChunkSettings
from ...rag.evaluate import CLOSED_BOOK, evaluate_rag
from ...rag.index import IndexOptions, build_index
from ...rag.retrieve import check_retriever
from ...train.finetune import FinetuneConfig, finetune
from ..core import (
    APART,
    BASE,
    SMOKE_STEPS,
    TUNED,
    Run,
    Stage,
    Step,
    Variant,
    check_data_spec,
    first_base,
    score,
    stage_of,
    start_afresh,
    training_cost,
)
from ..report import change_text, held, interval, mean, pair_outcome

NAME = "rag"

RAG_KEYS = {"docs", "retriever", "k", "chunk_tokens", "overlap", "embedder", "questions", "variants", "name", "finetune"}


def check_rag(options: dict, where: str, names: set, source: str) -> None:
    """A rag stage's options: `docs` (required: a path, a list of paths, or {task: docs-qa, rows, seed})."""
    extra = set(options) - RAG_KEYS
    if extra:
        raise UserError(f"{where} (rag): unknown field '{sorted(extra)[0]}'; rag takes {', '.join(sorted(RAG_KEYS))}")
    docs = options.get("docs")
    if not (isinstance(docs, (str, list)) or (isinstance(docs, dict) and docs.get("task") == "docs-qa")):
        raise UserError(f"{where} (rag): 'docs' must be a path, a list of paths, or {{task: docs-qa, rows: N, seed: S}}")
    check_retriever(str(options.get("retriever", "dense")), int(options.get("k", 5)))
    if "questions" in options:
        check_data_spec(options["questions"], where, "(rag) questions")
    if not isinstance(options.get("variants", []), list):
        raise UserError(f"{where} (rag): 'variants' must be a list of earlier variant names")
    if "finetune" in options:
        _check_finetune(options, where)


def _check_finetune(options: dict, where: str) -> None:
    if not (isinstance(options["docs"], dict) and options["docs"].get("task") == "docs-qa"):
        raise UserError(f"{where} (rag): finetune trains on the docs task's questions, so docs must be {{task: docs-qa, ...}}")
    fields_ = options["finetune"]
    if not isinstance(fields_, dict):
        raise UserError(f"{where} (rag): finetune must be a mapping of finetune options")
    FinetuneConfig(**configs.checked(FinetuneConfig, fields_, f"{where} (rag finetune)"), model="m", data="d", out="o").validate()


def _documents(run: Run, options: dict, folder: Path) -> list[str]:
    docs = options["docs"]
    if isinstance(docs, dict):
        path = folder / "docs.jsonl"
        write_jsonl(path, docs_qa(int(docs.get("rows", 400)), int(docs.get("seed", 1)))[0])
        return [str(path)]
    base = Path(run.recipe.source).parent
    return [str(p if Path(p).exists() else base / p) for p in ([docs] if isinstance(docs, str) else docs)]


def run_rag(run: Run, step: Step, folder: Path) -> None:
    """Build the index, then score every earlier variant with retrieval on the test questions."""
    options = step.options
    check_rag(options, f"stage {step.index}", set(run.variants), run.recipe.source)
    folder.mkdir(parents=True, exist_ok=True)
    chunking = ChunkSettings(int(options.get("chunk_tokens", 200)), int(options.get("overlap", 32)))
    build_index(_documents(run, options, folder), str(folder / "index"), IndexOptions(str(options.get("embedder", "minilm")), chunking))
    retriever, k = str(options.get("retriever", "dense")), int(options.get("k", 5))
    questions = run.data_file(f"{step.folder}-questions", options["questions"]) if "questions" in options else run.test
    if "finetune" in options:
        _finetune_closed_book(run, options, questions, folder)
    for variant in _with_retrieval(run, options):
        slug = variant.name.replace("+", "-").replace("/", "-")
        result = evaluate_rag(str(folder / "index"), questions, ModelOptions(variant.model), [retriever], k, run.settings(),
                              out=str(folder / f"{slug}.metrics.json"), resamples=200 if run.smoke else 1000,
                              save_predictions=str(folder / f"{slug}.predictions.jsonl"))
        predictions = _report_predictions(folder / f"{slug}.predictions.jsonl", retriever, folder / f"{slug}.rag.jsonl")
        first = stage_of(variant).variant_role == BASE and "name" in options
        _add_variant(run, variant, result[retriever], result[CLOSED_BOOK], predictions, str(options["name"]) if first else None)


def _with_retrieval(run: Run, options: dict) -> list:
    """The variants that answer again with retrieval: `variants`, else one prompting variant (the first: retrieval
    replaces the shots) and every tuned, aligned and deployed one."""
    chosen = options.get("variants")
    if chosen:
        unknown = [name for name in chosen if name not in run.variants]
        if unknown:
            raise UserError(f"rag stage: variants: '{unknown[0]}' is no earlier variant ({', '.join(run.variants)})")
        return [run.variants[name] for name in chosen] + ([run.variants["docs-ft"]] if "finetune" in options else [])
    base = first_base(run)
    return [v for v in list(run.variants.values())
            if stage_of(v).variant_role == TUNED or v is base or (v.name == "docs-ft" and "finetune" in options)]


def _finetune_closed_book(run: Run, options: dict, questions: str, folder: Path) -> None:
    """Fine-tune the recipe's model on the docs' questions that are not test questions; score it closed book."""
    docs = options["docs"]
    held_out = {row.values.get("question") for row in read_rows(questions)[0]}
    train = [row for row in docs_qa(int(docs.get("rows", 400)), int(docs.get("seed", 1)))[1] if row["question"] not in held_out]
    if not train:
        raise UserError("rag stage: finetune: every question of the docs task is a test question; give docs more rows")
    write_jsonl(folder / "finetune-train.jsonl", train[:8] if run.smoke else train)
    cfg = FinetuneConfig(**configs.checked(FinetuneConfig, options["finetune"], "rag finetune"), model=run.recipe.model,
                         data=str(folder / "finetune-train.jsonl"), out=str(folder / "finetune"))
    if run.smoke:
        cfg.max_steps, cfg.save_every, cfg.eval_every = SMOKE_STEPS, None, None
    start_afresh(folder / "finetune")
    variant = Variant("docs-ft", str(folder / "finetune"), NAME, cost=training_cost(finetune(cfg)), log=str(folder / "finetune" / "log.jsonl"))
    variant.metrics, variant.predictions = score(run, variant, questions, folder / "docs-ft.jsonl", ["exact_match", "rouge"])
    run.variants["docs-ft"] = variant


def _report_predictions(saved: Path, retriever: str, out: Path) -> Path:
    """`rag eval`'s per-question records as the report's prediction records (prompt, prediction, reference)."""
    records = [json.loads(line) for line in saved.read_text().splitlines() if line.strip()]
    write_jsonl(out, ({"prompt": r["question"], "prediction": r[retriever]["answer"], "reference": r["answers"][0],
                       "sources": r[retriever]["sources"]} for r in records))
    return out


def _add_variant(run: Run, variant: Variant, arm: dict, closed_book: dict, predictions: Path, name: str | None = None) -> None:
    if "exact_match" not in arm:
        raise UserError("rag stage: the test rows gave no answers to score; give rows with question and answers")
    costs = arm.pop("costs")
    cost = dict(variant.cost) | {f"rag_{key}": value for key, value in costs.items()}
    cost["rag_prompt_tokens"] = arm.get("prompt_tokens", {}).get("mean")
    cost |= {f"rag_misses_{kind}": count for kind, count in arm.get("misses", {}).items()}
    cost["closed_book_exact_match"] = closed_book.get("exact_match", {}).get("mean")
    metrics = {key: value for key, value in arm.items() if isinstance(value, dict) and "mean" in value}
    name = name or f"{variant.name}+rag"
    run.variants[name] = Variant(name, variant.model, NAME, cost=cost, metrics=metrics, predictions=str(predictions),
                                 paired=_against_closed_book(variant.name, arm))


def _against_closed_book(source: str, arm: dict) -> dict:
    """metrics.json's `paired` of a variant with retrieval: `rag eval`'s paired change from the same model closed book
    (`vs_closed_book`, the same questions resampled on both sides), under the name of the variant it extends."""
    changes = {metric: change | {"n": arm.get(metric, {}).get("n"), "outcome": outcome(metric, change)}
               for metric, change in arm.get("vs_closed_book", {}).items()}
    return {source: changes} if changes else {}


# ---------------------------------------------------------------- what it adds to the report


RETRIEVAL_WORDS = {"better": "Retrieval helps", "worse": "Retrieval hurts", NO_DIFFERENCE: "Retrieval makes no measurable difference to"}


def retrieval_findings(metrics: dict, variants: list) -> list:
    """A finding per variant with retrieval: its exact match against the same model closed book, by the paired test
    on the same questions (zero-shot against rag; docs-ft against docs-ft+rag)."""
    found = []
    for variant in (v for v in variants if v.stage == NAME and metrics.get(v.name, {}).get("paired")):
        entry = metrics[variant.name]
        source, changes = next(iter(entry["paired"].items()))
        if "exact_match" not in changes or mean(entry, "exact_match") is None:
            continue
        pair = changes["exact_match"]
        result = pair_outcome("exact_match", pair)
        closed = entry.get("cost", {}).get("closed_book_exact_match")
        without = f"{closed:.3f}" if closed is not None else "-"
        found.append((held(result), f"{RETRIEVAL_WORDS[result]} <b>{html.escape(variant.name)}</b>: exact match "
                      f"{mean(entry, 'exact_match'):.3f} with retrieval against {without} for {html.escape(source)} without it, "
                      f"{change_text(pair, unit='questions')}."))
    return found



def rag_section(metrics: dict, variants: list) -> str:
    """The rag stage's variants (each earlier variant with retrieval, and a closed-book fine-tune on the docs'
    other questions): answers, retrieval, misses and what each cost, on the stage's questions."""
    names = sorted({v.name for v in variants if v.stage == NAME})
    rows, keys = [], sorted({key for n in names for key in metrics.get(n, {}) if key.startswith(("hit@", "answerable@"))})
    for name in sorted(names, key=lambda n: ("+" in n or n == "rag", n)):
        entry, cost = metrics.get(name, {}), metrics.get(name, {}).get("cost", {})
        closed = cost.get("closed_book_exact_match", (entry.get("exact_match") or {}).get("mean") if "rag_index_seconds" not in cost else None)
        cells = [interval(entry.get(m)) for m in ("exact_match", "f1", "rougeL", *keys)]
        misses = f"{cost['rag_misses_retrieval']} / {cost.get('rag_misses_generation', '-')}" if "rag_misses_retrieval" in cost else "-"
        timing = (f"{cost['rag_index_seconds']:.1f} s index, {cost.get('rag_retrieval_ms_per_question', 0):.0f} + "
                  f"{cost.get('rag_generation_ms_per_question', 0):.0f} ms a question, {cost.get('rag_prompt_tokens', 0):.0f} prompt tokens"
                  if "rag_index_seconds" in cost else f"{cost['wall_time_s']:.1f} s training, closed book" if "wall_time_s" in cost else "-")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{'-' if closed is None else f'{closed:.3f}'}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{misses}</td><td>{timing}</td></tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{k}</th>" for k in ("exact match", "F1", "ROUGE-L", *keys))
    return ("<h2>Retrieval against fine-tuning</h2><table><tr><th>variant</th><th>exact match without retrieval</th>"
            f"{head}<th>misses: retrieval / generation</th><th>cost</th></tr>{''.join(rows)}</table>"
            "<p class='ci'>The same questions with and without retrieval (docs-ft: fine-tuned without retrieval on the "
            "documentation's other questions). A retrieval miss: the gold answer was not in the retrieved text "
            "(answerable@k); a generation miss: it was, and the answer was still wrong. '-': not measured.</p>")


RAG = Stage(NAME, check_rag, run_rag, variant_role=APART, headline=("exact_match", "rougeL"), findings=retrieval_findings,
            section=rag_section)
