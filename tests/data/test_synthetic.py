"""The built-in data generator: deterministic, disjoint across seeds, valid rows, faithful and toxic-when-rude summaries."""

from __future__ import annotations

import json
import re

import pytest

from llmcycle.data import synthetic
from llmcycle.data import load_examples
from llmcycle.errors import UserError
from llmcycle.evaluate.metrics import toxicity_scores
from llmcycle.train.scratch import corpus_texts
from llmcycle.data.synthetic import ALL_TASKS, INSTRUCT_TASKS, TASKS, SyntheticConfig, corpus, generate, write_synthetic

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

def test_instruct_mixes_the_held_in_tasks_and_leaves_out_summarisation():
    rows = generate("instruct", 40, 1)
    assert not any(row["prompt"].startswith("Summarize the following conversation") for row in rows)
    assert rows[0::5] == generate("extract", 8, 1) and rows[1::5] == generate("classify", 8, 1)
    assert "dialogsum" not in INSTRUCT_TASKS


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
