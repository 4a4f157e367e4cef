"""The built-in data generator: deterministic, disjoint across seeds, valid rows, faithful and toxic-when-rude summaries."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from conftest import run_cli
from llmcycle.data import synthetic, synthetic_docs, synthetic_entries, synthetic_passages, synthetic_reading
from llmcycle.data import load_examples
from llmcycle.errors import UserError
from llmcycle.evaluate.metrics import toxicity_scores
from llmcycle.train.scratch import corpus_texts
from llmcycle.data.synthetic import ALL_TASKS, INSTRUCT_MIX, INSTRUCT_TASKS, TASKS, SyntheticConfig, corpus, generate, write_synthetic
from llmcycle.data.synthetic_reading import UNANSWERABLE

PREFERENCE_TASKS = ["dialogsum-prefs"]
SUITE_TASKS = ["multiple-choice"]  # question/choices/answer rows, read by eval --suite (test_suites.py)
ROW_TASKS = [*(t for t in TASKS if t not in PREFERENCE_TASKS + SUITE_TASKS), "instruct"]


@pytest.mark.parametrize("task", ROW_TASKS)
def test_rows_are_a_function_of_the_seed(task):
    assert generate(task, 40, 1) == generate(task, 40, 1)
    assert generate(task, 40, 1) != generate(task, 40, 2)
    assert generate(task, 10, 1) == generate(task, 40, 1)[:10] or task == "instruct"


@pytest.mark.parametrize("task", ROW_TASKS)
def test_train_and_test_seeds_rarely_share_a_row(task):
    train = {row["prompt"] for row in generate(task, 400, 1)}
    test = [row["prompt"] for row in generate(task, 400, 2)]
    assert len(train) == 400  # no repeats within a call
    assert sum(prompt in train for prompt in test) / len(test) < 0.02


@pytest.mark.parametrize("task", ROW_TASKS)
def test_every_task_writes_rows_that_load_as_prompt_completion(task, tmp_path):
    path = write_synthetic(SyntheticConfig(task=task, rows=30, seed=3, out=str(tmp_path / f"{task}.jsonl")))
    examples = load_examples(str(path), require_completion=True).examples
    assert len(examples) == 30
    assert all(e.prompt.strip() and e.completion.strip() for e in examples)
    assert [json.loads(line)["prompt"] for line in path.read_text().splitlines()] == [e.prompt for e in examples]


@pytest.mark.parametrize("task", PREFERENCE_TASKS)
def test_preference_tasks_write_pairs_that_load_for_dpo(task, tmp_path):
    from llmcycle.data.preferences import load_pairs

    path = write_synthetic(SyntheticConfig(task=task, rows=30, seed=3, out=str(tmp_path / f"{task}.jsonl")))
    pairs = load_pairs(str(path))
    assert len(pairs) == 30
    for pair in pairs:  # the rejected summary is the chosen one with the insults in front of it
        assert pair.rejected.endswith(pair.chosen) and len(pair.rejected) > len(pair.chosen)
    chosen, rejected = (toxicity_scores([getattr(p, side) for p in pairs]).mean() for side in ("chosen", "rejected"))
    assert rejected > chosen + 0.3


def test_dialogues_have_the_course_format_and_2_to_4_speakers_in_3_to_8_turns():
    for row in generate("dialogsum", 300, 1):
        prompt = row["prompt"]
        assert prompt.startswith("Summarize the following conversation.\n\n") and prompt.endswith("\n\nSummary:")
        turns = prompt.split("\n\n")[1].split("\n")
        speakers = {turn.split(":", 1)[0] for turn in turns}
        assert 3 <= len(turns) <= 8 and 2 <= len(speakers) <= 4
        assert all(name in synthetic.NAMES for name in speakers)


def test_summaries_only_name_people_days_and_times_from_the_dialogue():
    pattern = re.compile("|".join([*synthetic.NAMES, *synthetic.DAYS, *(re.escape(t) for t in synthetic.TIMES)]))
    for row in generate("dialogsum", 300, 1):
        dialogue = row["prompt"].split("\n\n")[1]
        for mention in pattern.findall(row["completion"]):
            assert re.search(rf"\b{re.escape(mention)}\b", dialogue), (mention, row)


def test_a_quarter_of_dialogues_are_rude_and_their_summaries_are_more_toxic():
    from profanity_check import predict_prob

    rows = generate("dialogsum", 400, 1)
    rude = [r for r in rows if r["rude"]]
    clean = [r for r in rows if not r["rude"]]
    assert 0.15 < len(rude) / len(rows) < 0.35
    rude_scores = predict_prob([r["completion"] for r in rude])
    clean_scores = predict_prob([r["completion"] for r in clean])
    assert rude_scores.mean() > clean_scores.mean() + 0.3
    assert (clean_scores > 0.5).mean() < 0.02
    assert predict_prob([r["prompt"] for r in rude]).mean() > predict_prob([r["prompt"] for r in clean]).mean() + 0.2


def test_the_other_tasks_have_checkable_answers_and_several_phrasings():
    from profanity_check import predict_prob

    extract = generate("extract", 100, 1)
    assert all(row["completion"] in row["prompt"] for row in extract)
    assert {row["completion"] for row in generate("classify", 100, 1)} == {"positive", "negative", "neutral"}
    assert {row["completion"] for row in generate("topic", 200, 1)} == {"leisure", "work", "travel", "help", "shopping", "complaint"}
    rewrite = generate("rewrite", 200, 1)
    assert predict_prob([row["completion"] for row in rewrite]).max() < 0.5
    assert all("could you please" in row["completion"].lower() for row in rewrite)
    for task, forms in [("extract", synthetic.EXTRACT_FORMS), ("classify", synthetic.CLASSIFY_FORMS),
                        ("rewrite", synthetic.REWRITE_FORMS), ("topic", synthetic.TOPIC_FORMS), ("narrate", synthetic.NARRATE_FORMS)]:
        patterns = [re.compile(re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(form)), re.DOTALL) for form in forms]
        used = {i for row in generate(task, 60, 1) for i, pattern in enumerate(patterns) if pattern.fullmatch(row["prompt"])}
        assert used == set(range(len(forms))), task

def test_instruct_mixes_the_held_in_tasks_in_their_shares_and_leaves_out_summarisation():
    rows = generate("instruct", 200, 1)
    assert not any(row["prompt"].startswith("Summarize the following conversation") for row in rows)
    assert "dialogsum" not in INSTRUCT_TASKS and sum(INSTRUCT_MIX.values()) == 100
    counts = synthetic.mix_counts(200, INSTRUCT_MIX)
    assert counts == {task: 2 * share for task, share in INSTRUCT_MIX.items()}
    positions = {task: [rows.index(row) for row in generate(task, count, 1)] for task, count in counts.items()}
    assert sorted(p for spots in positions.values() for p in spots) == list(range(200))  # each task's own rows, no others
    for spots in positions.values():  # in order, and spread evenly: the j-th of n near (j + 1/2) / n of the way through
        assert spots == sorted(spots)
        assert all(abs(p - (j + 0.5) * 200 / len(spots)) <= len(INSTRUCT_MIX) for j, p in enumerate(spots))
    assert sum(synthetic.mix_counts(7, INSTRUCT_MIX).values()) == 7


def test_narrate_tells_one_speakers_part_and_a_suite_reads_the_multiple_choice_rows(tmp_path):
    from llmcycle.evaluate.suites import read_suite

    for row in generate("narrate", 40, 1):
        speaker = row["completion"].split(" ", 1)[0].removesuffix("'s")
        assert f"\n{speaker}: " in "\n" + row["prompt"] and speaker in row["prompt"].split("\n\n")[0 if row["prompt"].startswith("Read") else -1]
    path = write_synthetic(SyntheticConfig(task="multiple-choice", rows=40, seed=1, out=str(tmp_path / "mc.jsonl")))
    items = read_suite(str(path)).items
    assert len(items) == 40 and {item.subject for item in items} == {"topic", "sentiment", "facts", "arithmetic"}
    assert all(0 <= item.answer < len(item.choices) for item in items)


def test_corpus_writes_documents_as_jsonl_or_txt(tmp_path):
    documents = corpus(50, 1)
    assert documents == corpus(50, 1) and documents != corpus(50, 2)
    jsonl = write_synthetic(SyntheticConfig(task="corpus", rows=50, seed=1, out=str(tmp_path / "c.jsonl")))
    txt = write_synthetic(SyntheticConfig(task="corpus", rows=50, seed=1, out=str(tmp_path / "c.txt")))
    assert corpus_texts(jsonl) == documents
    assert corpus_texts(txt) == [" ".join(d.split()) for d in documents]
    assert not any("Summarize" in d or "Summary:" in d for d in corpus(300, 1))


@pytest.mark.parametrize(("changes", "message"), [
    ({"task": "poetry"}, "unknown --task"), ({"rows": 0}, "--rows"), ({"out": ""}, "--out is required"),
    ({"out": "rows.txt"}, ".jsonl"), ({"out": "rows.csv", "task": "corpus"}, ".jsonl"),
])
def test_bad_settings_are_one_line_errors_and_write_nothing(changes, message, tmp_path):
    values = {"task": "dialogsum", "rows": 5, "seed": 1, "out": "rows.jsonl"} | changes
    if values["out"]:
        values["out"] = str(tmp_path / values["out"])
    with pytest.raises(UserError, match=re.escape(message)):
        write_synthetic(SyntheticConfig(**values))
    assert list(tmp_path.iterdir()) == []


def test_every_task_name_is_listed():
    assert set(ALL_TASKS) == {*TASKS, "instruct", "corpus", "docs-qa"}
    with pytest.raises(UserError, match="unknown synthetic task"):
        generate("poetry", 3, 1)


# ---------------------------------------------------------------- reading, arithmetic-mix, copy and the corpus's copying documents


def reading_items(count: int, seed: int = 1) -> list:
    rng = random.Random(seed)
    return [synthetic_reading.reading_item(rng) for _ in range(count)]


def test_reading_answers_are_spans_of_their_passages_and_unanswerables_are_not_there():
    items = reading_items(600)
    for item in items:
        shown = " ".join(" ".join(p["text"].split()) for p in item.passages)
        if item.withheld is None:
            assert item.completion in shown and item.completion in item.prompt and item.completion != UNANSWERABLE
        else:
            assert item.completion == UNANSWERABLE and item.withheld not in item.prompt and item.withheld not in shown
    shares = {name: sum(test(i) for i in items) / len(items) for name, test in
              [("unanswerable", lambda i: i.withheld is not None), ("rag", lambda i: i.layout == "rag")]}
    assert 0.15 < shares["unanswerable"] < 0.25 and 0.33 < shares["rag"] < 0.47
    assert {i.style for i in items} == {"docs", "story", "table", "entry"}
    assert {len(i.passages) for i in items if i.layout == "rag"} == {1, 2, 3, 4, 5}
    bridges = [i for i in items if any(i.question == q.format(name=i.question.split("the ")[-1].rstrip("?"))
                                       for q in synthetic_passages.BRIDGE_QUESTIONS["lead"])]
    assert bridges and all(len(i.passages) >= 2 for i in bridges)


def test_reading_rag_rows_are_laid_out_as_rag_ask_lays_out_retrieved_passages():
    from llmcycle.rag.ask import RAG_TEMPLATE, fit_prompt

    head, tail = RAG_TEMPLATE.split("{context}")
    for item in (i for i in reading_items(300) if i.layout == "rag"):
        assert item.prompt == fit_prompt(None, item.question, item.passages, None)[0]  # what `rag ask` builds from them
        assert item.prompt.startswith(head + "[1] ") and item.prompt.endswith(tail.format(question=item.question))
        assert len(re.findall(r"^\[\d\] ", item.prompt, re.MULTILINE)) == len(item.passages)


def test_entries_state_each_fact_once_ask_it_in_other_words_and_name_nothing_of_the_unseen_pages():
    """Entries are the genre of examples/data/unseen-docs(-2), which no model may have seen: none of those pages' names
    appears in any entry; a stated value is a span of the text, an open one is not."""
    examples = Path(__file__).parents[2] / "examples" / "data"
    pages = [*(examples / "unseen-docs").glob("*.md"), *(examples / "unseen-docs-2").glob("*.md")]
    their_names = {w for page in pages for w in re.findall(r"\b[A-Z][a-z]+\b", page.read_text())}
    rng = random.Random(5)
    entries = [synthetic_entries.entry(rng) for _ in range(2000)]
    words = {w for e in entries for w in re.findall(r"[A-Za-z]+", " ".join([e.title, e.text, *(q for q, _ in e.answered + e.unanswered)]))}
    template_words = {w.capitalize() for w in re.findall(r"[A-Za-z]+", Path(synthetic_entries.__file__).read_text())}
    shared = words & their_names
    assert shared and shared <= template_words  # words of the module ("Bridge", "Works", "October"), never a drawn name
    kinds = {e.title.split()[-1].lower() for e in entries}
    assert len(kinds) > 30  # many kinds of thing
    for e in entries:
        assert 3 <= len(re.findall(r"[.!?](?:\s|$)", e.text)) and e.answered
        assert all(answer in e.text for _, answer in e.answered)
        assert all(answer not in e.text for _, answer in e.unanswered)
    rewordings = [q for e in entries for q, answer in e.answered
                  if not any(q.split()[0].lower() in s.lower().split() for s in e.text.split(". ") if answer in s)]
    assert len(rewordings) > 0.9 * sum(len(e.answered) for e in entries)  # the question's first word is not the sentence's


def docs_qa_names() -> set[str]:
    """Every name the docs-qa task uses (teams, people, kinds of component, products, components, rooms), lower case."""
    names = {*synthetic_docs.TEAM_NAMES, *synthetic_docs.FIRST, *synthetic_docs.LAST, *synthetic_docs.KINDS}
    for seed in (1, 2, 21):
        product, teams, components = synthetic_docs.documentation(seed, 40)
        names |= {product, *(c["name"].split()[0] for c in components), *(t["room"] for t in teams)}
    return {name.lower() for name in names}


def test_no_docs_qa_name_appears_in_reading_copy_or_the_corpus_extras():
    """The quickstart's RAG test asks about docs-qa's product: no model may have seen its names, nor any name made of
    its syllables."""
    made_of_its_syllables = re.compile("(?:" + "|".join(synthetic_docs.SYLLABLES) + ")+", re.IGNORECASE)
    names = docs_qa_names()
    texts = [row["prompt"] + " " + row["completion"] for task in ("reading", "copy") for row in generate(task, 400, 1)]
    texts += corpus(0, 1, 400)
    words = {word for text in texts for word in re.findall(r"[A-Za-z]+", text)}
    assert not {w for w in words if w.lower() in names or made_of_its_syllables.fullmatch(w)}


EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_every_arithmetic_problem_appears_with_steps_when_asked_and_directly_when_not():
    from llmcycle.generate.prompting import SHOT_SEPARATOR, ZERO_SHOT_COT

    rows = generate("arithmetic-mix", 300, 1)
    by_question: dict[str, list[dict]] = {}
    for row in rows:
        by_question.setdefault(row["question"], []).append(row)
        *shots, query = row["prompt"].split(SHOT_SEPARATOR)
        reasoned = {not shot.split("\n", 1)[1].startswith("The answer is") for shot in shots}  # cot_shot's layout
        steps_asked = query.endswith(ZERO_SHOT_COT) if not shots else reasoned == {True}
        assert len(reasoned) <= 1
        assert query.removesuffix(ZERO_SHOT_COT) == f"Question: {row['question']}" and steps_asked == row["steps"]
        assert all(re.fullmatch(r"Question: [^\n]+\n([^\n]+ )?The answer is \d+\.", s) for s in shots)
        expected = f"{row['rationale']} The answer is {row['answer']}." if row["steps"] else f"The answer is {row['answer']}."
        assert row["completion"] == expected
        for a, op, b, result in EQUATION.findall(row["rationale"]):  # the worked steps are right
            assert eval(f"{a} {op} {b}") == int(result)
    assert all(sorted(r["steps"] for r in pair) == [False, True] for pair in list(by_question.values())[:-1])
    assert any(len(EQUATION.findall(row["rationale"])) == 3 for row in rows)  # three-step problems among them


def test_copy_rows_copy_and_the_corpus_extras_repeat_spans_and_keep_the_old_documents():
    for row in generate("copy", 200, 1):
        assert row["completion"] in row["prompt"] and len(row["completion"]) > 3
    extras = corpus(50, 1, 40)[50:]
    assert corpus(50, 1, 40)[:50] == corpus(50, 1) and extras == corpus(50, 1, 40)[50:] and extras != corpus(50, 2, 40)[50:]
    assert all(re.search(r"(\w.{8,}\w).*\1", doc, re.DOTALL) for i, doc in enumerate(extras) if i % 3 != 2)  # repeat documents
    with pytest.raises(UserError, match="only with --task corpus"):
        SyntheticConfig(task="reading", rows=3, extra_documents=5, out="x.jsonl").validate()


def test_synth_reading_from_the_command_line_and_a_bad_task_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    assert run_cli("synth", "--task", "reading", "--rows", "10", "--seed", "1", "--out", out) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == generate("reading", 10, 1)
    capsys.readouterr()
    assert run_cli("synth", "--task", "readings", "--rows", "10", "--out", tmp_path / "y.jsonl") == 2
    error = capsys.readouterr().err.strip()
    assert "unknown --task 'readings'" in error and "\n" not in error and not (tmp_path / "y.jsonl").exists()
