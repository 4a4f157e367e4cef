"""`llmcycle rag ask`: retrieve chunks for a question, put them into the prompt, generate, and cite the sources.

The retrieved chunks go into the prompt numbered by rank ("[1] Title: text"), in the layout of the extraction
prompts the embedded model was tuned on. A prompt that does not fit the model's context window (for a
decoder-only model, less `--max-new-tokens`; for T5, its encoder's limit, 512 tokens when the config sets
none) loses its lowest-ranked chunks first; the sources printed are the chunks the model was actually given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..data.io import read_rows
from ..errors import UserError
from ..generate.engine import GenerationSettings, generate
from ..models import LoadedModel, ModelOptions
from ..outputs import check_writable
from .retrieve import Hit, RagIndex, check_retriever

RAG_TEMPLATE = "Read the text and answer the question.\n\n{context}\n\nQuestion: {question}\nAnswer:"
CLOSED_BOOK_TEMPLATE = "Question: {question}\nAnswer:"
ENCODER_FALLBACK_WINDOW = 512


@dataclass
class Question:
    """One row of a questions or QA file: answers and gold document ids where given."""

    question: str
    answers: list[str]
    gold_ids: list[str]
    where: str


def read_questions(path: str, require_answers: bool) -> list[Question]:
    """Rows with `question` (a string), `answers` (a list of strings; required when scoring) and optional `gold_ids`."""
    rows, bad = read_rows(path)
    if bad:
        raise UserError(bad[0].message())
    return [_question(row.values, row.where, require_answers) for row in rows]


def _strings(value, where: str, field: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise UserError(f"{where}: field '{field}' must be a list of non-empty strings")
    return values


def _question(values: dict, where: str, require_answers: bool) -> Question:
    question = values.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: field 'question' is missing, empty or not a string")
    answers = values.get("answers")
    if answers is None or answers == []:
        if require_answers:
            raise UserError(f"{where}: field 'answers' is missing or empty; give the accepted answers as a list of strings")
        answers = []
    answers = _strings(answers, where, "answers")
    gold = values.get("gold_ids")
    gold_ids = [] if gold is None else _strings([str(g) if isinstance(g, int) else g for g in gold] if isinstance(gold, list) else gold, where, "gold_ids")
    return Question(question, answers, gold_ids, where)


def prompt_budget(loaded: LoadedModel, max_new_tokens: int) -> int | None:
    """Tokens a prompt may take: the context window less the new tokens (decoder-only), or the encoder's limit."""
    window = loaded.context_window
    if loaded.is_encoder_decoder:
        return window or ENCODER_FALLBACK_WINDOW
    return None if window is None else max(1, window - max_new_tokens)


def render(question: str, passages: list[dict]) -> str:
    if not passages:
        return CLOSED_BOOK_TEMPLATE.format(question=question)
    context = "\n\n".join(f"[{n}] {p['title']}: {' '.join(p['text'].split())}" for n, p in enumerate(passages, start=1))
    return RAG_TEMPLATE.format(context=context, question=question)


def fit_prompt(tokenizer, question: str, passages: list[dict], budget: int | None) -> tuple[str, int]:
    """The prompt with as many of the top passages as fit the budget, and how many that is."""
    for count in range(len(passages), 0, -1):
        prompt = render(question, passages[:count])
        if budget is None or len(tokenizer(prompt)["input_ids"]) <= budget:
            return prompt, count
    return render(question, []), 0


@dataclass
class Prepared:
    """Prompts for a batch of questions, with the chunks each was given and what retrieval cost."""

    prompts: list[str]
    sources: list[list[dict]]
    prompt_tokens: list[int]
    """Tokens of each prompt as the model reads it: the cost of the context given."""
    retrieval_seconds: float


def source_record(index: RagIndex, hit: Hit, rank: int) -> dict:
    chunk = index.chunks[hit.row]
    return {"rank": rank, "chunk": chunk["id"], "document": chunk["document"], "title": chunk["title"],
            "source": chunk["source"], "score": round(hit.score, 6)}


def prepare(index: RagIndex | None, loaded: LoadedModel, questions: list[str], k: int, retriever: str | None, max_new_tokens: int,
            hits: list[list[Hit]] | None = None) -> Prepared:
    """Retrieve (unless `retriever` is None: closed book; or given `hits`) and assemble the prompts within the context window."""
    if retriever is None or index is None:
        prompts = [render(q, []) for q in questions]
        return Prepared(prompts, [[] for _ in questions], token_counts(loaded, prompts), 0.0)
    seconds = 0.0
    if hits is None:
        index.warm(retriever)
        started = time.perf_counter()
        hits = index.search(questions, k, retriever)
        seconds = time.perf_counter() - started
    budget = prompt_budget(loaded, max_new_tokens)
    prompts, sources = [], []
    for question, found in zip(questions, hits):
        prompt, used = fit_prompt(loaded.tokenizer, question, [index.chunks[hit.row] for hit in found], budget)
        prompts.append(prompt)
        sources.append([source_record(index, hit, rank) for rank, hit in enumerate(found[:used], start=1)])
    return Prepared(prompts, sources, token_counts(loaded, prompts), seconds)


def token_counts(loaded: LoadedModel, prompts: list[str]) -> list[int]:
    return [len(ids) for ids in loaded.tokenizer(prompts)["input_ids"]] if prompts else []


def ask(index_path: str, model: ModelOptions, questions: list[str], k: int, retriever: str, settings: GenerationSettings) -> list[dict]:
    """Answer each question from retrieved chunks; one record a question: question, answer, sources."""
    check_retriever(retriever, k)
    settings.validate()
    index = RagIndex.open(index_path)
    loaded = model.load()
    prepared = prepare(index, loaded, questions, k, retriever, settings.max_new_tokens)
    answers = generate(loaded, prepared.prompts, settings, description="answering")
    return [{"question": q, "answer": a.strip(), "sources": s, "prompt_tokens": t}
            for q, a, s, t in zip(questions, answers, prepared.sources, prepared.prompt_tokens)]


def check_out(out: str | None) -> None:
    if out:
        if Path(out).suffix.lower() != ".jsonl":
            raise UserError(f"--out {out}: write answers to a .jsonl file")
        check_writable(out)
