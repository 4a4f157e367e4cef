import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from llmcycle.data import load_examples, load_template
from llmcycle.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROWS = [{"prompt": "Say hi", "completion": "hi"}, {"prompt": "Say bye", "completion": "bye"}]


def test_jsonl_json_csv_parquet_read_the_same(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "a.csv").write_text("prompt,completion\nSay hi,hi\nSay bye,bye\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.csv", "a.parquet"):
        examples = load_examples(str(tmp_path / name)).examples
        assert [(e.prompt, e.completion) for e in examples] == [("Say hi", "hi"), ("Say bye", "bye")], name


def test_alpaca_layout(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        {"instruction": "Name a colour", "output": "red"},
    ])
    first, second = load_examples(str(path)).examples
    assert "### Instruction:\nTranslate to French" in first.prompt and "### Input:\ncat" in first.prompt
    assert first.prompt.endswith("### Response:\n") and first.completion == "chat"
    assert "### Input" not in second.prompt and second.completion == "red"


def test_messages_use_the_chat_renderer(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]},
    ])
    seen = []

    def chat(messages, add_generation_prompt):
        seen.append(add_generation_prompt)
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + ("|assistant:" if add_generation_prompt else "")

    first, second = load_examples(str(path), chat=chat).examples
    assert (first.prompt, first.completion) == ("user:hello|assistant:", "hi")
    assert (second.prompt, second.completion) == ("system:be brief|user:hello|assistant:", None)
    assert seen == [True, True]


def test_template_phrasings_are_chosen_per_row_by_seed(tmp_path):
    template_path = tmp_path / "t.yaml"
    template_path.write_text(
        'prompt:\n  - "Describe: {review_body}"\n  - "Headline for {product_title} ({star_rating}): {review_body}"\n'
        'completion: "{review_headline}"\n'
    )
    rows = [{"product_title": f"p{i}", "review_body": f"body {i}", "star_rating": i % 5 + 1, "review_headline": f"h{i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    template = load_template(template_path)
    first = [e.prompt for e in load_examples(str(path), template=template, seed=1).examples]
    again = [e.prompt for e in load_examples(str(path), template=template, seed=1).examples]
    other = [e.prompt for e in load_examples(str(path), template=template, seed=2).examples]
    assert first == again and first != other
    assert {p.split(":")[0].split(" ")[0] for p in first} == {"Describe", "Headline"}
    assert "Headline for p3 (4): body 3" in first or "Describe: body 3" in first
    assert load_examples(str(path), template=template).examples[0].completion == "h0"


def test_shipped_product_review_template(tmp_path):
    examples = load_examples(str(EXAMPLES / "data/reviews.csv"), template=load_template(EXAMPLES / "templates/product_review.yaml")).examples
    assert len(examples) == 5 and examples[0].completion == "Comfortable and light"


BAD_ROWS = [
    ('{"prompt": "a", "completion": "b"}\n{not json\n', "line 2: not valid JSON"),
    ('{"prompt": "a", "completion": "b"}\n[1, 2]\n', "line 2: not a JSON object"),
    ('{"prompt": 3, "completion": "b"}\n', "line 1: field 'prompt' is not a string"),
    ('{"prompt": "   ", "completion": "b"}\n', "line 1: field 'prompt' is empty"),
    ('{"question": "a", "answer": "b"}\n', "line 1: unknown layout (fields: answer, question)"),
    ('{"prompt": "a", "completion": 5}\n', "line 1: field 'completion' is not a string"),
    ('{"messages": "hi"}\n', "line 1: field 'messages' must be a non-empty list"),
    ('{"instruction": "a", "output": ["b"]}\n', "line 1: field 'output' is not a string"),
]


@pytest.mark.parametrize("text,message", BAD_ROWS)
def test_bad_rows_name_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_examples(str(path), chat=lambda m, g: "x")
    assert str(info.value).startswith(f"{path} {message}")
    assert "\n" not in str(info.value)


def test_missing_completion_when_required(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a"}])
    with pytest.raises(UserError, match="line 1: has no completion"):
        load_examples(str(path), require_completion=True)


def test_template_missing_field(tmp_path):
    (tmp_path / "t.yaml").write_text('prompt: "Describe: {review_body}"\n')
    path = write_jsonl(tmp_path / "r.jsonl", [{"review_body": "ok"}, {"body": "x"}])
    with pytest.raises(UserError, match=r"line 2: field 'review_body' \(used by template"):
        load_examples(str(path), template=load_template(tmp_path / "t.yaml"))


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b"  \n\n", "the file is empty"),
    (b"\x00\x01\x02binary\x00", "binary file"),
])
def test_empty_and_binary_files(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_examples(str(path))


def test_csv_extra_cells_and_missing_file(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,completion\nok,fine\na,b,c\n")
    with pytest.raises(UserError, match=r"a.csv line 3: 3 cells, header has 2"):
        load_examples(str(tmp_path / "a.csv"))
    with pytest.raises(UserError, match="does not exist"):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="unknown data format"):
        (tmp_path / "a.txt").write_text("x")
        load_examples(str(tmp_path / "a.txt"))


def test_skip_bad_rows_counts_what_it_skipped(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\nnot json\n{"prompt": ""}\n{"prompt": "c"}\n')
    data = load_examples(str(path), skip_bad_rows=True)
    assert [e.prompt for e in data.examples] == ["a", "c"] and len(data.skipped) == 2
    assert "skipped 2 unusable rows of 4" in capsys.readouterr().err
    path.write_text("not json\n")
    with pytest.raises(UserError, match="no usable rows"):
        load_examples(str(path), skip_bad_rows=True)


def test_template_file_errors(tmp_path):
    bad = tmp_path / "t.yaml"
    for text, message in [
        ("prompt: [1, 2]\n", "'prompt' must be a non-empty string"),
        ("prompt: hi\nextra: 1\n", "unknown key 'extra'"),
        ('prompt: "{a.b}"\n', "must be a plain field name"),
        ("prompt: [\n", "not valid YAML"),
        ('prompt: "{q}"\nrationale: [1]\n', "'rationale' must be a string"),
        ('prompt: "{q}"\nrationale: "{a.b}"\n', "must be a plain field name"),  # the rationale's fields are checked too
        ("- prompt\n", "expected a mapping with 'prompt'"),
    ]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            load_template(bad)


def test_byte_order_mark_and_empty_csv_cells(tmp_path):
    (tmp_path / "a.csv").write_bytes("\ufeffprompt,completion\nSay hi,\nSay bye,bye\n".encode())
    examples = load_examples(str(tmp_path / "a.csv")).examples
    assert [(e.prompt, e.completion) for e in examples] == [("Say hi", None), ("Say bye", "bye")]
    (tmp_path / "a.jsonl").write_bytes('\ufeff{"prompt": "x"}\n'.encode())
    assert load_examples(str(tmp_path / "a.jsonl")).examples[0].prompt == "x"
