"""Chain-of-thought prompting (`prompt --cot`, self-consistency) and `synth --task arithmetic`."""

import json
import re

import numpy as np
import pytest

from conftest import run_cli, write_jsonl
from llmcycle.data.synthetic import generate as synth_rows
from llmcycle.generate.prompting import compile_answer_pattern, extract_answer, majority


def test_arithmetic_rows_have_rationales_whose_steps_are_right_and_end_at_the_answer():
    rows = synth_rows("arithmetic", 60, seed=3)
    assert rows == synth_rows("arithmetic", 60, seed=3) and len({r["prompt"] for r in rows}) == 60
    for row in rows:
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", row["rationale"])
        assert steps, row
        for a, op, b, result in steps:
            assert eval(f"{a} {op} {b}") == int(result)  # noqa: S307 - digits and one operator only
        assert steps[-1][3] == row["answer"] and row["completion"].endswith(f"The answer is {row['answer']}.")
        assert int(row["answer"]) >= 0


def test_synth_arithmetic_from_the_cli(tmp_path):
    out = tmp_path / "arith.jsonl"
    assert run_cli("synth", "--task", "arithmetic", "--rows", 5, "--out", out) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]) == {"prompt", "rationale", "answer", "completion"}


@pytest.mark.parametrize("text,answer", [
    ("so 3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is 1,234.\nQuestion: next", "1234"),
    ("the answer is: $12.50. Then more", "12.50"),
    ("THE ANSWER IS Paris", "paris"),
    ("I think it is 7", None),
])
def test_default_answer_pattern(text, answer):
    assert extract_answer(compile_answer_pattern(None), text) == answer


def test_custom_answer_pattern_and_its_errors():
    assert extract_answer(compile_answer_pattern(r"#### (\d+)"), "work... #### 42") == "42"
    for bad in (r"no group", r"(a)(b)", r"(unclosed"):
        with pytest.raises(Exception, match="--answer-pattern"):
            compile_answer_pattern(bad)


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_first_seen():
    assert majority(["3", None, "4", "4"]) == "4"
    assert majority(["5", "6", None]) == "5"
    assert majority([None, None]) is None


@pytest.fixture
def arithmetic(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", synth_rows("arithmetic", 10, seed=1)),
            write_jsonl(tmp_path / "test.jsonl", synth_rows("arithmetic", 6, seed=2)))


def test_cot_direct_and_self_consistency_side_by_side(gpt2_dir, arithmetic, tmp_path):
    train, test = arithmetic
    out, metrics = tmp_path / "preds.jsonl", tmp_path / "metrics.json"
    assert run_cli("prompt", "-m", gpt2_dir, "--data", test, "--shot-data", train, "--shots", 2, "--cot",
                   "--self-consistency", 3, "--max-new-tokens", 12, "--out", out, "--metrics-out", metrics) == 0
    read = lambda mode: [json.loads(x) for x in (tmp_path / f"preds.{mode}.jsonl").read_text().splitlines()]  # noqa: E731
    direct, cot, consistency = read("direct"), read("cot"), read("self-consistency")
    train_rows = [json.loads(x) for x in train.read_text().splitlines()]
    rationales = [r["rationale"] for r in train_rows]
    assert all(sum(r in d["prompt"] for r in rationales) == 0 and d["prompt"].count("The answer is") == 2 for d in direct)
    assert all(sum(r in c["prompt"] for r in rationales) == 2 for c in cot)
    assert [d["reference"] for d in direct] == [json.loads(x)["answer"] for x in test.read_text().splitlines()]
    for record in consistency:
        assert len(record["prediction"]) == 3 and record["answer"] == majority(record["path_answers"])
    assert len({tuple(r["prediction"]) for r in consistency}) > 1 or len(set(consistency[0]["prediction"])) > 1
    result = json.loads(metrics.read_text())
    assert list(result) == ["direct", "cot", "self-consistency"]
    for mode, records in (("direct", direct), ("cot", cot), ("self-consistency", consistency)):
        assert result[mode]["accuracy"]["mean"] == pytest.approx(np.mean([r["correct"] for r in records]), abs=1e-6)
    assert set(result["cot"]["accuracy"]["change"]) == {"absolute", "relative", "ci95", "p_value"}


def test_zero_shot_cot_asks_to_think_step_by_step(gpt2_dir, arithmetic, tmp_path):
    _, test = arithmetic
    assert run_cli("prompt", "-m", gpt2_dir, "--data", test, "--cot", "--max-new-tokens", 4, "--out", tmp_path / "p.jsonl") == 0
    cot = [json.loads(x) for x in (tmp_path / "p.cot.jsonl").read_text().splitlines()]
    assert all(r["prompt"].endswith("\nLet's think step by step.") for r in cot)


def test_a_cot_shot_without_rationale_is_a_one_line_error(gpt2_dir, arithmetic, tmp_path, capsys):
    _, test = arithmetic
    shots = write_jsonl(tmp_path / "shots.jsonl", [{"prompt": "Question: 1 + 1?", "completion": "2"}] * 1 +
                        [{"prompt": "Question: 2 + 2?", "answer": "4", "completion": "4"}])
    assert run_cli("prompt", "-m", gpt2_dir, "--data", test, "--shot-data", shots, "--shots", 1, "--cot",
                   "--out", tmp_path / "p.jsonl") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"error: .*shots\.jsonl line [12]: field 'rationale' is missing", error), error
    assert not list(tmp_path.glob("p.*"))


def test_a_template_may_carry_the_rationale(gpt2_dir, arithmetic, tmp_path):
    """Rows in the user's own fields: the template maps them to prompt, completion and rationale."""
    train, test = arithmetic
    rename = lambda r: {"q": r["prompt"], "steps": r["rationale"], "a": r["answer"]}  # noqa: E731
    for path in (train, test):
        write_jsonl(path, [rename(json.loads(x)) for x in path.read_text().splitlines()])
    template = tmp_path / "t.yaml"
    template.write_text('prompt: "{q}"\ncompletion: "{a}"\nrationale: "{steps}"\n')
    assert run_cli("prompt", "-m", gpt2_dir, "--data", test, "--shot-data", train, "--template", template, "--shots", 2,
                   "--cot", "--max-new-tokens", 4, "--out", tmp_path / "p.jsonl") == 0
    steps = [json.loads(x)["steps"] for x in train.read_text().splitlines()]
    cot = [json.loads(x) for x in (tmp_path / "p.cot.jsonl").read_text().splitlines()]
    assert all(sum(s in record["prompt"] for s in steps) == 2 for record in cot)
