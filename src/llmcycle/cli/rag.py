"""`llmcycle rag index | ask | eval`: retrieval-augmented generation over your own documents."""

from __future__ import annotations

import click

from ..errors import UserError
from ..outputs import dump_jsonl, write_jsonl
from ..rag.chunking import ChunkSettings
from ..rag.index import IndexOptions, build_index
from .options import generation_options, generation_settings, model_options, model_spec, optional_model_options

RETRIEVER_CHOICES = click.Choice(["dense", "bm25", "hybrid"])


@click.group()
def rag():
    """Retrieval-augmented generation: index documents, answer from them, measure it against no retrieval."""


@rag.command(name="index")
@click.argument("docs", nargs=-1, required=True)
@click.option("--out", "-o", required=True, help="Index folder to write (replaced when complete).")
@click.option("--embedder", default="minilm", show_default=True, help="'minilm' (bundled all-MiniLM-L6-v2) or a sentence-transformers model folder.")
@click.option("--chunk-tokens", type=int, default=200, show_default=True, help="Most embedder tokens in a chunk.")
@click.option("--overlap", type=int, default=32, show_default=True, help="Tokens a chunk may repeat from the one before.")
@click.option("--ann", type=click.Choice(["hnsw", "ivf"]), default="hnsw", show_default=True, help="Approximate FAISS index past --ann-threshold.")
@click.option("--ann-threshold", type=int, default=50_000, show_default=True, help="Up to this many chunks FAISS search is exact.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Chunks embedded together.")
@click.option("--update", is_flag=True, help="Re-embed only documents that changed since the index at --out was built.")
@click.option("--store", type=click.Choice(["folder", "qdrant"]), default="folder", show_default=True, help="Where the vectors go.")
@click.option("--url", default=None, help="With --store qdrant: server URL, or a folder for Qdrant's local mode.")
@click.option("--collection", default=None, help="With --store qdrant: collection name (default: the index folder's name).")
def index_(docs, out, embedder, chunk_tokens, overlap, ann, ann_threshold, batch_size, update, store, url, collection):
    """Index text, Markdown, HTML, JSONL (id, text, title, source) and PDF documents, files or folders."""
    options = IndexOptions(embedder, ChunkSettings(chunk_tokens, overlap), ann, ann_threshold, batch_size, update, store, url, collection)
    build_index(list(docs), out, options)


def retrieval_options(func):
    func = click.option("--k", "k", type=int, default=5, show_default=True, help="Chunks retrieved per question.")(func)
    return click.option("--index", "index_path", required=True, help="Index folder written by `rag index`.")(func)


@rag.command()
@click.argument("question", required=False)
@retrieval_options
@click.option("--retriever", type=RETRIEVER_CHOICES, default="dense", show_default=True, help="hybrid: reciprocal rank fusion of dense and bm25.")
@model_options
@click.option("--data", "-d", default=None, help="Questions file (rows with `question`) instead of one QUESTION.")
@click.option("--out", "-o", default=None, help="With --data: write answers and sources (JSONL) here instead of stdout.")
@generation_options
def ask(question, index_path, k, retriever, data, out, **kwargs):
    """Answer a question (or every row of --data) from retrieved chunks, and print the sources given."""
    from ..rag.ask import ask as ask_questions
    from ..rag.ask import check_out, read_questions

    settings, model = generation_settings(kwargs), model_spec(kwargs)
    if (question is None) == (data is None):
        raise UserError("give exactly one of QUESTION or --data FILE")
    if question is not None and not question.strip():
        raise UserError("the QUESTION is empty; ask something")
    if out and not data:
        raise UserError("--out goes with --data; one QUESTION's answer is printed")
    check_out(out)
    questions = [question] if question is not None else [q.question for q in read_questions(data, require_answers=False)]
    records = ask_questions(index_path, model, questions, k, retriever, settings)
    if question is not None:
        click.echo(records[0]["answer"])
        click.echo("\nsources:")
        for source in records[0]["sources"]:
            click.echo(f"[{source['rank']}] {source['document']}: {source['title']} ({source['chunk']}, score {source['score']:.3f})")
    elif out:
        write_jsonl(out, records)
        click.echo(f"wrote {len(records)} answers to {out}")
    else:
        click.echo(dump_jsonl(records))


@rag.command(name="eval")
@retrieval_options
@click.option("--retriever", "retrievers", multiple=True, help="dense, bm25, hybrid or all (repeatable or comma-separated; default all).")
@click.option("--data", "-d", required=True, help="QA rows: question, answers (list), optional gold_ids (document ids).")
@optional_model_options("Model to answer with; without it only retrieval is scored.")
@click.option("--bootstrap", "resamples", type=int, default=1000, show_default=True, help="Bootstrap resamples for the 95% intervals.")
@click.option("--save-predictions", default=None, help="With --model: write each question's answers per arm (JSONL) here.")
@click.option("--out", "-o", default=None, help="Write the metrics of every arm (JSON) here.")
@generation_options
def eval_(index_path, k, retrievers, data, resamples, save_predictions, out, **kwargs):
    """Retrieval (hit@k, recall@k, MRR, nDCG@k) and answers (EM, F1, ROUGE-L) with and without retrieval, side by side."""
    from ..rag.evaluate import evaluate_rag, parse_retrievers

    settings = generation_settings(kwargs)
    model = model_spec(kwargs) if kwargs.get("model") else None
    if model is None and kwargs.get("adapters"):
        raise UserError("--adapter needs --model")
    evaluate_rag(index_path, data, model, parse_retrievers(retrievers), k, settings, out=out, resamples=resamples,
                 save_predictions=save_predictions)


COMMANDS = [rag]
