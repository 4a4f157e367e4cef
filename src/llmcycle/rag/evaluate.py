"""`llmcycle rag eval`: retrieval and answer quality, with and without retrieval, on the same questions.

Retrieval (rows with `gold_ids`; a chunk counts for its document, each gold document once): `hit@k` (a gold
document among the top k), `recall@k` (share of gold documents among them), `mrr` (1 / rank of the first gold
chunk within the top k, 0 if none), `ndcg@k` (binary relevance). `answerable@k`: an accepted answer appears,
normalised, in the retrieved text: the ceiling retrieval leaves to generation. Answers: `exact_match` and `f1`
(SQuAD's normalisation: lower case, no punctuation or articles; the best over the accepted answers), `rougeL`
(rouge-score through llmcycle.evaluate.metrics, best over the answers), and `groundedness`, a heuristic: the
share of the answer's normalised tokens that occur in the retrieved text (it cannot tell a copied wrong fact
from a right one). Every value is `{"mean", "ci95", "n"}` with a seeded bootstrap interval.

Arms: `closed_book` (the model without retrieval, with --model) and one per retriever; a miss of an arm is a
retrieval miss when the answer was not in what it retrieved, else a generation miss. With a model, each
retriever's arm also carries `vs_closed_book`: the change in exact match, F1 and ROUGE-L from closed book, with a
paired bootstrap interval and p-value (the same questions resampled on both sides).
"""

from __future__ import annotations

import re
import string
import time
from collections import Counter

import numpy as np

from ..console import note, print_table
from ..errors import UserError
from ..evaluate.metrics import METRICS, MetricInput
from ..evaluate.stats import Statistic, bootstrap_summary, mean_of_first, paired_change
from ..generate.engine import GenerationSettings, generate
from ..models import ModelOptions
from ..outputs import check_writable, write_json, write_jsonl
from .ask import Prepared, Question, prepare, read_questions
from .retrieve import RETRIEVERS, Hit, RagIndex, check_retriever

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = set(string.punctuation)
CLOSED_BOOK = "closed_book"
NOTES = {
    "groundedness": "heuristic: share of the answer's normalised tokens found in the retrieved text",
    "answerable@k": "an accepted answer appears (normalised) in the retrieved text: the ceiling retrieval allows",
    "misses": "wrong answers (exact match 0): retrieval misses had no accepted answer in the retrieved text, generation misses had",
}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: list[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: list[str]) -> float:
    best = 0.0
    predicted = normalize_answer(prediction).split()
    for answer in answers:
        truth = normalize_answer(answer).split()
        common = sum((Counter(predicted) & Counter(truth)).values())
        if not predicted or not truth:
            best = max(best, float(predicted == truth))
        elif common:
            precision, recall = common / len(predicted), common / len(truth)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def rouge_l(predictions: list[str], answers: list[list[str]]) -> np.ndarray:
    """Per-question ROUGE-L F1 against the best-matching accepted answer."""
    best = np.zeros(len(predictions))
    for j in range(max(len(a) for a in answers)):
        references = [a[min(j, len(a) - 1)] for a in answers]
        data = MetricInput(predictions, references, [""] * len(predictions), [""] * len(predictions))
        best = np.maximum(best, METRICS["rouge"](data)["rougeL"].values[:, 0])
    return best


def answerable(answers: list[str], text: str) -> float:
    normalized = f" {normalize_answer(text)} "
    return float(any(f" {normalize_answer(a)} " in normalized for a in answers if normalize_answer(a)))


def groundedness(prediction: str, text: str) -> float:
    tokens = normalize_answer(prediction).split()
    if not tokens:
        return 0.0
    found = set(normalize_answer(text).split())
    return sum(token in found for token in tokens) / len(tokens)


def retrieval_values(questions: list[Question], documents: list[list[str]], k: int) -> dict[str, list[float]]:
    """Per-question hit@k, recall@k, mrr, ndcg@k for rows with gold ids; `documents`: each question's ranked chunk documents."""
    values: dict[str, list[float]] = {f"hit@{k}": [], f"recall@{k}": [], "mrr": [], f"ndcg@{k}": []}
    for question, ranked in zip(questions, documents):
        gold = set(question.gold_ids)
        if not gold:
            continue
        seen: set[str] = set()
        gains = []
        for document in ranked[:k]:
            gains.append(float(document in gold and document not in seen))
            seen.add(document)
        first = next((rank for rank, d in enumerate(ranked[:k], start=1) if d in gold), None)
        ideal = sum(1 / np.log2(r + 1) for r in range(1, min(len(gold), k) + 1))
        values[f"hit@{k}"].append(float(first is not None))
        values[f"recall@{k}"].append(len(gold & seen) / len(gold))
        values["mrr"].append(1.0 / first if first else 0.0)
        values[f"ndcg@{k}"].append(sum(g / np.log2(r + 1) for r, g in enumerate(gains, start=1)) / ideal)
    return values


def summarize(values, resamples: int, seed: int) -> dict:
    summary = bootstrap_summary(Statistic(np.asarray(values, dtype=np.float64)[:, None], mean_of_first), resamples, seed)
    summary.pop("std", None)
    return summary


def retrieval_arm(index: RagIndex, questions: list[Question], k: int, retriever: str) -> tuple[list[list[Hit]], float, dict]:
    """(hits, seconds, per-question values) of one retriever."""
    index.warm(retriever)
    started = time.perf_counter()
    hits = index.search([q.question for q in questions], k, retriever)
    seconds = time.perf_counter() - started
    documents = [[index.chunks[h.row]["document"] for h in found] for found in hits]
    values = retrieval_values(questions, documents, k)
    texts = [" ".join(index.chunks[h.row]["text"] for h in found) for found in hits]
    values[f"answerable@{k}"] = [answerable(q.answers, t) for q, t in zip(questions, texts)]
    return hits, seconds, values


def answer_values(questions: list[Question], predictions: list[str], contexts: list[str] | None) -> dict[str, list[float]]:
    answers = [q.answers for q in questions]
    values = {
        "exact_match": [exact_match(p, a) for p, a in zip(predictions, answers)],
        "f1": [token_f1(p, a) for p, a in zip(predictions, answers)],
        "rougeL": rouge_l(predictions, answers).tolist(),
    }
    if contexts is not None:
        values["groundedness"] = [groundedness(p, c) for p, c in zip(predictions, contexts)]
    return values


def parse_retrievers(values) -> list[str]:
    """`dense,bm25`, repeated flags, or `all`; in the order given, without repeats."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    names = list(RETRIEVERS) if not names or "all" in names else list(dict.fromkeys(names))
    for name in names:
        check_retriever(name, 1)
    return names


def _model_arm(loaded, index, questions, k, retriever, settings: GenerationSettings, hits=None):
    """(predictions, prepared prompts, generation seconds) of the model given `hits` of `retriever` (None: closed book)."""
    prepared: Prepared = prepare(index, loaded, [q.question for q in questions], k, retriever, settings.max_new_tokens, hits)
    started = time.perf_counter()
    predictions = [p.strip() for p in generate(loaded, prepared.prompts, settings, description=f"answering ({retriever or CLOSED_BOOK})")]
    return predictions, prepared, time.perf_counter() - started


def _misses(values: dict, k: int) -> dict:
    wrong = [em == 0 for em in values["exact_match"]]
    found = values.get(f"answerable@{k}")
    if found is None:
        return {"wrong": int(sum(wrong))}
    retrieval = sum(w and not a for w, a in zip(wrong, found))
    return {"wrong": int(sum(wrong)), "retrieval": int(retrieval), "generation": int(sum(wrong) - retrieval)}


def _costs(seconds_retrieval: float | None, seconds_generation: float | None, questions: int, index: RagIndex | None) -> dict:
    """Per-question retrieval and generation time (batched, so divided by the questions) and the index's build time."""
    costs = {}
    if seconds_retrieval is not None:
        costs["retrieval_ms_per_question"] = round(1000 * seconds_retrieval / questions, 3)
    if seconds_generation is not None:
        costs["generation_ms_per_question"] = round(1000 * seconds_generation / questions, 3)
    if index is not None:
        costs["index_seconds"] = index.manifest.get("index_seconds")
    return costs


def _arm(values: dict, resamples: int, seed: int) -> dict:
    return {name: summarize(vals, resamples, seed) for name, vals in values.items() if len(vals)}


def evaluate_rag(index_path: str, data: str, model: ModelOptions | None, retrievers: list[str], k: int, settings: GenerationSettings,
                 out: str | None = None, resamples: int = 1000, save_predictions: str | None = None) -> dict:
    """Score every arm on the questions of `data`; writes `out` (JSON) and `save_predictions` (JSONL) when given."""
    check_retriever(retrievers[0] if retrievers else "dense", k)
    settings.validate()
    for path in (out, save_predictions):
        if path:
            check_writable(path)
    questions = read_questions(data, require_answers=True)
    index = RagIndex.open(index_path)
    if model is None and save_predictions:
        raise UserError("--save-predictions needs --model (without it only retrieval is scored)")
    result, records = _score_arms(index, questions, model, retrievers, k, settings, resamples)
    result["settings"] = {"index": str(index_path), "data": str(data), "model": model.model if model else None, "k": k,
                          "retrievers": retrievers, "questions": len(questions), "generation": vars(settings) if model else None,
                          "notes": NOTES}
    if out:
        write_json(out, result)
    if save_predictions:
        write_jsonl(save_predictions, records)
    print_rag_table(result, k)
    return result


def _score_arms(index, questions, model, retrievers, k, settings, resamples) -> tuple[dict, list[dict]]:
    loaded = model.load() if model else None
    result: dict = {}
    records = [{"question": q.question, "answers": q.answers, "gold_ids": q.gold_ids} for q in questions]
    closed: dict = {}
    if loaded is not None:
        predictions, prepared, seconds = _model_arm(loaded, None, questions, k, None, settings)
        values = closed = answer_values(questions, predictions, None)
        result[CLOSED_BOOK] = _arm(values | {"prompt_tokens": prepared.prompt_tokens}, resamples, settings.seed)
        result[CLOSED_BOOK] |= {"costs": _costs(None, seconds, len(questions), None), "misses": _misses(values, k)}
        for record, prediction in zip(records, predictions):
            record[CLOSED_BOOK] = {"answer": prediction}
    for retriever in retrievers:
        hits, seconds, values = retrieval_arm(index, questions, k, retriever)
        generation_seconds = None
        if loaded is not None:
            predictions, prepared, generation_seconds = _model_arm(loaded, index, questions, k, retriever, settings, hits)
            contexts = [" ".join(index.chunks[h.row]["text"] for h in found) for found in hits]
            values |= answer_values(questions, predictions, contexts) | {"prompt_tokens": prepared.prompt_tokens}
            for record, prediction, sources in zip(records, predictions, prepared.sources):
                record[retriever] = {"answer": prediction, "sources": [s["chunk"] for s in sources]}
        result[retriever] = _arm(values, resamples, settings.seed)
        result[retriever]["costs"] = _costs(seconds, generation_seconds, len(questions), index)
        if loaded is not None:
            result[retriever]["misses"] = _misses(values, k)
            result[retriever]["vs_closed_book"] = _paired(closed, values, resamples, settings.seed)
    if not any(q.gold_ids for q in questions):
        note("no row has gold_ids: hit@k, recall@k, mrr and ndcg@k are left out")
    return result, records


def _paired(closed: dict, values: dict, resamples: int, seed: int) -> dict:
    """Each answer metric's change from closed book to this arm, with a paired bootstrap on the same questions."""
    def statistic(per_question):
        return Statistic(np.asarray(per_question, dtype=np.float64)[:, None], mean_of_first)

    return {name: paired_change(statistic(closed[name]), statistic(values[name]), resamples, seed) for name in ("exact_match", "f1", "rougeL")}


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    low, high = entry["ci95"]
    return f"{entry['mean']:.3f} [{low:.2f}, {high:.2f}]"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_rag_table(result: dict, k: int) -> None:
    arms = [name for name in result if name != "settings"]
    columns = [f"hit@{k}", "mrr", f"answerable@{k}", "exact_match", "f1", "rougeL", "groundedness"]
    columns = [c for c in columns if any(c in result[arm] for arm in arms)]
    rows = []
    for arm in arms:
        misses = result[arm].get("misses", {})
        miss_text = f"{misses['retrieval']}/{misses['generation']}" if "retrieval" in misses else "-"
        tokens = result[arm].get("prompt_tokens")
        rows.append([arm, *(_cell(result[arm].get(c)) for c in columns), f"{tokens['mean']:.0f}" if tokens else "-",
                     _ms(result[arm]["costs"].get("retrieval_ms_per_question")), miss_text])
    headers = [("groundedness (heuristic)" if c == "groundedness" else c) for c in columns]
    print_table("rag eval (mean [95% CI])", ["arm", *headers, "prompt tokens", "retrieval ms/question", "misses retrieval/generation"], rows)
