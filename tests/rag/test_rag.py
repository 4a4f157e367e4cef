"""llmcycle rag: index, ask, eval; peer checks against sentence-transformers + FAISS and bm25s called directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_jsonl

from llmcycle.models import bundled_models

QUESTIONS = [
    "What port does the gateway listen on?", "Who leads the Falcon team?", "How do you restart the cache?",
    "Which version introduced the scheduler?", "What is the configuration key of the broker?",
]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def docs_qa(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docsqa")
    assert run_cli("synth", "--task", "docs-qa", "--rows", "80", "--seed", "3", "--out", folder / "qa.jsonl") == 0
    return folder


@pytest.fixture(scope="module")
def index(docs_qa) -> Path:
    out = docs_qa / "idx"
    assert run_cli("rag", "index", docs_qa / "qa.docs.jsonl", "--out", out, "--chunk-tokens", "48", "--overlap", "8") == 0
    return out


@pytest.fixture(scope="module")
def chunk_texts(index) -> list[str]:
    return [json.loads(line)["text"] for line in (index / "chunks.jsonl").read_text().splitlines()]


def test_index_folder_describes_itself(index, docs_qa):
    assert listing(index) == ["bm25", "chunks.jsonl", "faiss.index", "manifest.json", "vectors.npy"]
    manifest = json.loads((index / "manifest.json").read_text())
    pages = [json.loads(line) for line in (docs_qa / "qa.docs.jsonl").read_text().splitlines()]
    assert manifest["embedder"]["dimension"] == 384 and manifest["chunking"] == {"chunk_tokens": 48, "overlap": 8}
    assert set(manifest["documents"]) == {p["id"] for p in pages}
    chunks = [json.loads(line) for line in (index / "chunks.jsonl").read_text().splitlines()]
    assert manifest["chunks"] == len(chunks) > len(pages)  # 48-token chunks cut every page
    by_id = {p["id"]: p["text"] for p in pages}
    for chunk in chunks:  # every chunk is its document's text at its span
        start, end = chunk["span"]
        assert by_id[chunk["document"]][start:end] == chunk["text"]
    assert [p.name for p in index.parent.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_chunks_fit_the_budget_and_cover_the_document(chunk_texts, index):
    from transformers import AutoTokenizer

    from llmcycle.rag.chunking import ChunkSettings, token_ranges

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_models()["minilm"]))
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chunk_texts]
    assert max(lengths) <= 48
    ends_on_sentence = sum(t.rstrip().endswith((".", "!", "?")) for t in chunk_texts) / len(chunk_texts)
    assert ends_on_sentence > 0.8  # sentences are short, so almost every chunk ends at one
    # ranges cover every token, overlap at most `overlap`, and cut at boundaries where one is in reach
    ranges = token_ranges(list(range(100)), [10, 30, 55, 70, 95], ChunkSettings(40, 10))
    assert ranges[0] == (0, 30) and ranges[-1][1] == 100
    assert all(b2 > b1 and a2 <= b1 and b1 - a2 <= 10 for (a1, b1), (a2, b2) in zip(ranges, ranges[1:]))


def test_dense_retrieval_equals_sentence_transformers_and_faiss(index, chunk_texts):
    import faiss
    from sentence_transformers import SentenceTransformer

    from llmcycle.rag.retrieve import RagIndex

    model = SentenceTransformer(str(bundled_models()["minilm"]), device="cpu")
    vectors = model.encode(chunk_texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    peer = faiss.IndexFlatIP(vectors.shape[1])
    peer.add(vectors)
    scores, rows = peer.search(model.encode(QUESTIONS, normalize_embeddings=True, convert_to_numpy=True), 5)
    hits = RagIndex.open(index).search(QUESTIONS, 5, "dense")
    assert [[h.row for h in found] for found in hits] == rows.tolist()
    np.testing.assert_allclose([[h.score for h in found] for found in hits], scores, atol=1e-5)
    np.testing.assert_allclose(np.load(index / "vectors.npy"), vectors, atol=1e-5)


def test_bm25_equals_bm25s_called_directly(index, chunk_texts):
    import bm25s

    from llmcycle.rag.retrieve import RagIndex

    peer = bm25s.BM25()
    peer.index(bm25s.tokenize(chunk_texts, stopwords="en", show_progress=False), show_progress=False)
    rows, scores = peer.retrieve(bm25s.tokenize(QUESTIONS, stopwords="en", show_progress=False), k=5, show_progress=False)
    hits = RagIndex.open(index).search(QUESTIONS, 5, "bm25")
    assert all(len(found) == 5 for found in hits)
    assert [[h.row for h in found] for found in hits] == rows.tolist()
    np.testing.assert_allclose([[h.score for h in found] for found in hits], scores, rtol=1e-6)


def test_hybrid_is_reciprocal_rank_fusion(index):
    from llmcycle.rag.retrieve import RRF_CONSTANT, RagIndex

    rag = RagIndex.open(index)
    dense, bm25 = rag.search(QUESTIONS, 50, "dense"), rag.search(QUESTIONS, 50, "bm25")
    for question, found in zip(range(len(QUESTIONS)), rag.search(QUESTIONS, 5, "hybrid")):
        fused: dict[int, float] = {}
        for ranking in (dense[question], bm25[question]):
            for rank, hit in enumerate(ranking, start=1):
                fused[hit.row] = fused.get(hit.row, 0) + 1 / (RRF_CONSTANT + rank)
        best = sorted(fused.values(), reverse=True)[:5]
        np.testing.assert_allclose([h.score for h in found], best)
        assert all(abs(fused[h.row] - h.score) < 1e-12 for h in found)


def test_eval_retrieval_alone(index, docs_qa, tmp_path):
    out = tmp_path / "metrics.json"
    assert run_cli("rag", "eval", "--index", index, "--data", docs_qa / "qa.jsonl", "--k", "3", "--bootstrap", "200", "--out", out) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"dense", "bm25", "hybrid", "settings"}
    for arm in ("dense", "bm25", "hybrid"):
        assert {"hit@3", "recall@3", "mrr", "ndcg@3", "answerable@3"} <= set(metrics[arm])
        entry = metrics[arm]["hit@3"]
        assert entry["n"] == 80 and entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
        assert entry["mean"] > 0.8  # the component name in every question finds its page
        assert metrics[arm]["recall@3"]["mean"] <= entry["mean"] and metrics[arm]["mrr"]["mean"] <= entry["mean"]


def test_retrieval_metrics_by_hand():
    from llmcycle.rag.ask import Question
    from llmcycle.rag.evaluate import exact_match, retrieval_values, token_f1

    questions = [Question("q", ["a"], ["A", "B"], "row 1"), Question("q", ["a"], ["C"], "row 2")]
    values = retrieval_values(questions, [["X", "A", "A", "B"], ["X", "Y", "Z"]], k=3)
    assert values["hit@3"] == [1.0, 0.0] and values["recall@3"] == [0.5, 0.0] and values["mrr"] == [0.5, 0.0]
    ideal = 1 + 1 / np.log2(3)
    assert values["ndcg@3"] == pytest.approx([(1 / np.log2(3)) / ideal, 0.0])
    assert exact_match("The  Falcon!", ["falcon"]) == 1.0 and token_f1("port 80 today", ["port 80"]) == pytest.approx(0.8)


def test_update_reembeds_only_changed_documents(tmp_path):
    from llmcycle.rag.retrieve import RagIndex

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\n\nThe alpha service listens on port 1111. It is old.\n")
    (docs / "b.txt").write_text("The beta service listens on port 2222. It is new.\n")
    (docs / "c.html").write_text("<html><title>Gamma</title><body><p>The gamma service listens on port 3333.</p><script>x=1</script></body></html>")
    out = tmp_path / "idx"
    assert run_cli("rag", "index", docs, "--out", out) == 0
    before = RagIndex.open(out)
    assert before.chunks[2]["title"] == "Gamma" and "x=1" not in before.chunks[2]["text"]
    (docs / "b.txt").write_text("The beta service listens on port 4444 since the move. It is new.\n")
    (docs / "d.md").write_text("The delta service listens on port 5555.\n")
    marker = np.load(out / "vectors.npy")
    marker[0] += 1.0  # a vector --update must keep as it is (document a.md did not change)
    np.save(out / "vectors.npy", marker)
    assert run_cli("rag", "index", docs, "--out", out, "--update") == 0
    after = RagIndex.open(out)
    assert [c["document"] for c in after.chunks] == ["a.md", "b.txt", "c.html", "d.md"]
    vectors = after.vectors()
    np.testing.assert_array_equal(vectors[[0, 2]], marker[[0, 2]])  # kept, not re-embedded
    fresh = tmp_path / "fresh"
    assert run_cli("rag", "index", docs, "--out", fresh) == 0
    np.testing.assert_allclose(vectors[[1, 3]], RagIndex.open(fresh).vectors()[[1, 3]], atol=1e-6)
    assert "4444" in after.chunks[1]["text"]


def tiny_embedder(folder: Path) -> Path:
    """A sentence-transformers model of another dimension (32), built from a config."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_models()["minilm"]))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    transformer = models.Transformer(str(folder / "bert"), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, models.Pooling(32)])
    model.save(str(folder / "st"))
    return folder / "st"


def fails_cleanly(capsys, *args) -> str:
    assert run_cli(*args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_documents_are_named_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "idx"
    (tmp_path / "empty.md").write_text("  \n")
    assert "empty.md is empty" in fails_cleanly(capsys, "rag", "index", tmp_path / "empty.md", "--out", out)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00binary")
    assert "bad.txt: not UTF-8" in fails_cleanly(capsys, "rag", "index", tmp_path / "bad.txt", "--out", out)
    rows = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "fine"}, {"id": "b"}])
    assert "docs.jsonl line 2: field 'text'" in fails_cleanly(capsys, "rag", "index", rows, "--out", out)
    assert "does not exist" in fails_cleanly(capsys, "rag", "index", tmp_path / "nope.md", "--out", out)
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "a", "text": "fine"}])
    assert "--chunk-tokens 999" in fails_cleanly(capsys, "rag", "index", good, "--out", out, "--chunk-tokens", "999")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_indexes_and_qa_rows(index, docs_qa, tmp_path, capsys):
    out = tmp_path / "m.json"
    qa = docs_qa / "qa.jsonl"
    assert "does not exist" in fails_cleanly(capsys, "rag", "eval", "--index", tmp_path / "missing", "--data", qa, "--out", out)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert "corrupt" in fails_cleanly(capsys, "rag", "eval", "--index", broken, "--data", qa, "--out", out)
    no_answers = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q1", "answers": ["a"]}, {"question": "q2"}])
    assert "qa.jsonl line 2: field 'answers'" in fails_cleanly(capsys, "rag", "eval", "--index", index, "--data", no_answers, "--out", out)
    assert not out.exists()
    other = tiny_embedder(tmp_path)  # --update with another embedder (dimension 32, not 384)
    message = fails_cleanly(capsys, "rag", "index", docs_qa / "qa.docs.jsonl", "--out", index, "--update", "--embedder", other,
                           "--chunk-tokens", "48")
    assert "built with embedder minilm (dimension 384)" in message and "dimension 32" in message
    assert json.loads((index / "manifest.json").read_text())["embedder"]["dimension"] == 384  # left as it was
    shrunk = tmp_path / "shrunk"  # an index whose vectors are not what its manifest says
    other_index = tmp_path / "other"
    assert run_cli("rag", "index", docs_qa / "qa.docs.jsonl", "--out", other_index, "--embedder", other, "--chunk-tokens", "48") == 0
    shutil.copytree(index, shrunk)
    shutil.copy(other_index / "faiss.index", shrunk / "faiss.index")
    assert "dimension 32" in fails_cleanly(capsys, "rag", "eval", "--index", shrunk, "--data", qa, "--retriever", "dense", "--out", out)
    assert not out.exists()


@pytest.mark.slow
def test_qdrant_local_mode_returns_what_faiss_returns(index, docs_qa, tmp_path):
    pytest.importorskip("qdrant_client")
    from llmcycle.rag.retrieve import RagIndex

    out = tmp_path / "qidx"
    assert run_cli("rag", "index", docs_qa / "qa.docs.jsonl", "--out", out, "--chunk-tokens", "48", "--overlap", "8",
                   "--store", "qdrant", "--url", tmp_path / "qdrant") == 0
    assert "vectors.npy" not in listing(out) and json.loads((out / "manifest.json").read_text())["store"]["kind"] == "qdrant"
    ours, theirs = RagIndex.open(out).search(QUESTIONS, 5, "dense"), RagIndex.open(index).search(QUESTIONS, 5, "dense")
    assert [[h.row for h in f] for f in ours] == [[h.row for h in f] for f in theirs]
    np.testing.assert_allclose([[h.score for h in f] for f in ours], [[h.score for h in f] for f in theirs], atol=1e-4)


def copy_rows(seeds: range, rng) -> tuple[list[dict], list[str]]:
    """RAG prompts (the answer's sentence and two others of its page, shuffled) for 'which team maintains X' questions."""
    import re

    from llmcycle.data.synthetic_docs import TEAM_NAMES, docs_qa
    from llmcycle.rag.ask import render

    rows, texts = [], []
    for seed in seeds:
        pages, qa = docs_qa(240, seed)
        by_id = {p["id"]: p for p in pages}
        texts += [p["text"] for p in pages]
        for q in qa:
            if q["hops"] != 1 or q["answers"][0] not in TEAM_NAMES:
                continue
            page = by_id[q["gold_ids"][0]]
            sentences = re.split(r"(?<=\.)\s+", page["text"].split("\n\n", 1)[1].replace("\n\n", " "))
            gold = [s for s in sentences if f"the {q['answers'][0]} team" in s][:1]
            chosen = gold + rng.sample([s for s in sentences if s not in gold], 2)
            rng.shuffle(chosen)
            rows.append({"prompt": render(q["question"], [{"title": page["title"], "text": s} for s in chosen]), "completion": q["answers"][0]})
    return rows, texts


@pytest.mark.slow
def test_retrieval_lifts_a_tiny_reader_above_closed_book(tmp_path):
    """A tiny T5 learns to copy the team name out of its context on products 10-19; on product 2, whose facts it
    never saw, it can only guess without retrieval (6 teams), and copies with it."""
    import random

    from llmcycle.data.synthetic_docs import TEAM_NAMES, docs_qa
    from llmcycle.train.finetune import FinetuneConfig, finetune
    from llmcycle.train.scratch import ScratchSpec, build_model, train_tokenizer

    rows, texts = copy_rows(range(10, 20), random.Random(0))
    write_jsonl(tmp_path / "train.jsonl", rows)
    tokenizer = train_tokenizer(texts + [r["prompt"] for r in rows[:200]], 800, append_eos=True)
    build_model(ScratchSpec(arch="t5", layers=2, hidden=64, heads=4, vocab_size=800), tokenizer).save_pretrained(tmp_path / "scratch")
    tokenizer.save_pretrained(tmp_path / "scratch")
    finetune(FinetuneConfig(model=str(tmp_path / "scratch"), data=str(tmp_path / "train.jsonl"), out=str(tmp_path / "reader"),
                            method="full", max_steps=120, lr=3e-3, batch_size=32, max_length=160, warmup_steps=10))
    pages, qa = docs_qa(400, 2)
    write_jsonl(tmp_path / "docs.jsonl", pages)
    write_jsonl(tmp_path / "qa.jsonl", [q for q in qa if q["hops"] == 1 and q["answers"][0] in TEAM_NAMES])
    assert run_cli("rag", "index", tmp_path / "docs.jsonl", "--out", tmp_path / "idx", "--chunk-tokens", "24", "--overlap", "0") == 0
    assert run_cli("rag", "eval", "--index", tmp_path / "idx", "--data", tmp_path / "qa.jsonl", "--model", tmp_path / "reader",
                   "--retriever", "dense", "--k", "3", "--max-new-tokens", "8", "--out", tmp_path / "m.json") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    closed, dense = metrics["closed_book"], metrics["dense"]
    assert closed["exact_match"]["n"] == dense["exact_match"]["n"] == 50
    assert dense["exact_match"]["ci95"][0] > closed["exact_match"]["ci95"][1]  # intervals apart
    assert dense["f1"]["ci95"][0] > closed["f1"]["ci95"][1] and dense["exact_match"]["mean"] > 0.6
    assert dense["prompt_tokens"]["mean"] > closed["prompt_tokens"]["mean"]
    change = dense["vs_closed_book"]["exact_match"]
    assert change["absolute"] == pytest.approx(dense["exact_match"]["mean"] - closed["exact_match"]["mean"]) and change["ci95"][0] > 0


def test_ask_prints_the_answer_and_the_sources_it_was_given(index, t5_dir, capsys):
    from llmcycle.rag.retrieve import RagIndex

    assert run_cli("rag", "ask", "--index", index, "--model", t5_dir, "--k", "3", "--max-new-tokens", "5", QUESTIONS[1]) == 0
    printed = capsys.readouterr().out.splitlines()
    top = RagIndex.open(index).search([QUESTIONS[1]], 3, "dense")[0]
    chunks = RagIndex.open(index).chunks
    sources = printed[printed.index("sources:") + 1 :]
    assert [line.split("] ")[0] for line in sources] == ["[1", "[2", "[3"]
    for line, hit in zip(sources, top):
        assert line.startswith(f"[{top.index(hit) + 1}] {chunks[hit.row]['document']}: {chunks[hit.row]['title']} ({chunks[hit.row]['id']},")


def test_prompts_keep_the_top_chunks_that_fit_the_context_window(index, tmp_path):
    from conftest import build

    from llmcycle.models import ModelOptions
    from llmcycle.rag.ask import ask, prompt_budget
    from llmcycle.rag.retrieve import RagIndex

    from llmcycle.generate.engine import GenerationSettings

    small = build("gpt2", tmp_path / "gpt2-256", context=256)
    records = ask(str(index), ModelOptions(str(small)), QUESTIONS, 5, "hybrid", GenerationSettings(max_new_tokens=8))
    loaded = ModelOptions(str(small)).load()
    assert prompt_budget(loaded, 8) == 248
    ranked = RagIndex.open(index).search(QUESTIONS, 5, "hybrid")
    for record, hits in zip(records, ranked):
        assert 0 < len(record["sources"]) < 5 and record["prompt_tokens"] <= 248  # the lowest-ranked were dropped
        assert [s["chunk"] for s in record["sources"]] == [RagIndex.open(index).chunks[h.row]["id"] for h in hits[: len(record["sources"])]]


@pytest.mark.slow
def test_rag_stage_adds_a_variant_with_retrieval(t5_dir, tmp_path):
    from llmcycle.lifecycle.core import Recipe, Run, Step, Variant
    from llmcycle.lifecycle.stages.rag import run_rag

    assert run_cli("synth", "--task", "docs-qa", "--rows", "16", "--seed", "4", "--out", tmp_path / "qa.jsonl") == 0
    recipe = Recipe("r", str(t5_dir), {"test": str(tmp_path / "qa.jsonl")}, [], {"max_new_tokens": 4}, ["rouge"], [],
                    str(tmp_path / "recipe.yaml"))
    run = Run(recipe, tmp_path / "run", smoke=True)
    run.variants["zero-shot"] = Variant("zero-shot", str(t5_dir), "baseline", cost={"trainable_params": 0})
    run_rag(run, Step(2, "rag", "", {"docs": str(tmp_path / "qa.docs.jsonl"), "k": 2, "chunk_tokens": 64}), tmp_path / "stage")
    added = run.variants["zero-shot+rag"]
    assert added.stage == "rag" and {"exact_match", "f1", "rougeL", "hit@2", "answerable@2", "prompt_tokens"} <= set(added.metrics)
    assert added.metrics["exact_match"]["n"] == 8  # a smoke run keeps 8 test rows
    assert added.cost["trainable_params"] == 0 and added.cost["rag_index_seconds"] > 0
    first = json.loads(Path(added.predictions).read_text().splitlines()[0])
    assert {"prompt", "prediction", "reference", "sources"} <= set(first)


def test_ask_data_writes_answers_with_sources(index, gpt2_dir, tmp_path, capsys):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": q} for q in QUESTIONS[:3]])
    out = tmp_path / "answers.jsonl"
    assert run_cli("rag", "ask", "--index", index, "--model", gpt2_dir, "--data", questions, "--retriever", "bm25", "--k", "2",
                   "--max-new-tokens", "4", "--out", out) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in records] == QUESTIONS[:3]
    assert all(len(r["sources"]) == 2 and r["sources"][0]["rank"] == 1 and r["prompt_tokens"] > 0 for r in records)
    assert "--out goes with --data" in fails_cleanly(capsys, "rag", "ask", "--index", index, "--model", gpt2_dir, "--out", out, "q?")
    assert "needs --url" in fails_cleanly(capsys, "rag", "index", questions, "--out", tmp_path / "x", "--store", "qdrant")
