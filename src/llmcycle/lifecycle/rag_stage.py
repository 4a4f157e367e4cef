"""The `rag` stage of a recipe: every variant so far answers the test questions again, with retrieval.

```yaml
- rag: {docs: docs/ , retriever: dense, k: 5, chunk_tokens: 200, overlap: 32, embedder: minilm}
- rag: {docs: {task: docs-qa, rows: 400, seed: 1}}      # the synthetic product's pages
```
The test rows must carry `question` and `answers` (as `synth --task docs-qa` writes them). The index is built once
in the stage's folder; each earlier variant V (the zero-shot prompt, fine-tuned and aligned runs) gains a
variant `V+rag` whose metrics are `rag eval`'s arm for the retriever (exact match, F1, ROUGE-L, answerable@k,
retrieval metrics, prompt tokens, misses split into retrieval and generation) and whose cost adds the index
time, prompt tokens and latencies to V's own (training time included), so prompting, fine-tuning, RAG and
fine-tuning + RAG stand side by side in one report; the cost also records V's closed-book exact match on the same
questions and prompt layout (`closed_book_exact_match`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

RAG_KEYS = {"docs", "retriever", "k", "chunk_tokens", "overlap", "embedder"}


def check_rag(options: dict, where: str) -> None:
    """A rag stage's options: `docs` (required: a path, a list of paths, or {task: docs-qa, rows, seed})."""
    extra = set(options) - RAG_KEYS
    if extra:
        raise UserError(f"{where} (rag): unknown field '{sorted(extra)[0]}'; rag takes {', '.join(sorted(RAG_KEYS))}")
    docs = options.get("docs")
    if not (isinstance(docs, (str, list)) or (isinstance(docs, dict) and docs.get("task") == "docs-qa")):
        raise UserError(f"{where} (rag): 'docs' must be a path, a list of paths, or {{task: docs-qa, rows: N, seed: S}}")
    from ..rag.retrieve import check_retriever

    check_retriever(str(options.get("retriever", "dense")), int(options.get("k", 5)))


def _documents(run, options: dict, folder: Path) -> list[str]:
    docs = options["docs"]
    if isinstance(docs, dict):
        from ..data.synthetic_docs import docs_qa
        from ..outputs import write_jsonl

        path = folder / "docs.jsonl"
        write_jsonl(path, docs_qa(int(docs.get("rows", 400)), int(docs.get("seed", 1)))[0])
        return [str(path)]
    base = Path(run.recipe.source).parent
    return [str(p if Path(p).exists() else base / p) for p in ([docs] if isinstance(docs, str) else docs)]


def run_rag(run, step, folder: Path) -> None:
    """Build the index, then score every earlier variant with retrieval on the test questions."""
    from ..models import ModelOptions
    from ..rag.chunking import ChunkSettings
    from ..rag.evaluate import CLOSED_BOOK, evaluate_rag
    from ..rag.index import IndexOptions, build_index

    options = step.options
    check_rag(options, f"stage {step.index}")
    folder.mkdir(parents=True, exist_ok=True)
    chunking = ChunkSettings(int(options.get("chunk_tokens", 200)), int(options.get("overlap", 32)))
    build_index(_documents(run, options, folder), str(folder / "index"), IndexOptions(str(options.get("embedder", "minilm")), chunking))
    retriever, k = str(options.get("retriever", "dense")), int(options.get("k", 5))
    resamples = 200 if run.smoke else 1000
    first_prompting = next((v.name for v in run.variants.values() if v.kind == "prompting"), None)
    for variant in [v for v in list(run.variants.values()) if v.kind in ("prompting", "finetune", "align", "deploy")]:
        if variant.kind == "prompting" and variant.name != first_prompting:
            continue  # one prompting variant (the first, zero-shot) is enough: retrieval replaces the shots
        slug = variant.name.replace("+", "-").replace("/", "-")
        result = evaluate_rag(str(folder / "index"), run.test, ModelOptions(variant.model), [retriever], k, run.settings(),
                              out=str(folder / f"{slug}.metrics.json"), resamples=resamples,
                              save_predictions=str(folder / f"{slug}.predictions.jsonl"))
        predictions = _report_predictions(folder / f"{slug}.predictions.jsonl", retriever, folder / f"{slug}.rag.jsonl")
        _add_variant(run, variant, result[retriever], result[CLOSED_BOOK], predictions)


def _report_predictions(saved: Path, retriever: str, out: Path) -> Path:
    """`rag eval`'s per-question records as the report's prediction records (prompt, prediction, reference)."""
    import json

    from ..outputs import write_jsonl

    records = [json.loads(line) for line in saved.read_text().splitlines() if line.strip()]
    write_jsonl(out, ({"prompt": r["question"], "prediction": r[retriever]["answer"], "reference": r["answers"][0],
                       "sources": r[retriever]["sources"]} for r in records))
    return out


def _add_variant(run, variant, arm: dict, closed_book: dict, predictions: Path) -> None:
    from .recipes import Variant

    if "exact_match" not in arm:
        raise UserError("rag stage: the test rows gave no answers to score; give rows with question and answers")
    costs = arm.pop("costs")
    cost = dict(variant.cost) | {f"rag_{key}": value for key, value in costs.items()}
    cost["rag_prompt_tokens"] = arm.get("prompt_tokens", {}).get("mean")
    cost |= {f"rag_misses_{kind}": count for kind, count in arm.get("misses", {}).items()}
    cost["closed_book_exact_match"] = closed_book.get("exact_match", {}).get("mean")
    metrics = {key: value for key, value in arm.items() if isinstance(value, dict) and "mean" in value}
    name = f"{variant.name}+rag"
    run.variants[name] = Variant(name, variant.model, "rag", cost=cost, metrics=metrics, predictions=str(predictions))

