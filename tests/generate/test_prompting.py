import pytest
from conftest import dialogue_rows, write_jsonl

from llmcycle.data import load_examples
from llmcycle.errors import UserError
from llmcycle.models import load_model
from llmcycle.generate.prompting import SHOT_SEPARATOR, build_prompts, draw_shots, parse_shots


def test_shots_never_include_the_row_and_are_seeded(dialogues):
    examples = load_examples(str(dialogues)).examples
    for query in examples:
        shots = draw_shots(query, examples, 3, seed=5, same_source=True)
        assert len(shots) == 3 and query not in shots and len({s.index for s in shots}) == 3
        assert draw_shots(query, examples, 3, seed=5, same_source=True) == shots
    assert any(
        draw_shots(q, examples, 3, seed=5, same_source=True) != draw_shots(q, examples, 3, seed=6, same_source=True)
        for q in examples
    )


def test_prompt_layout_puts_shots_before_the_query(gpt2_dir, dialogues):
    loaded = load_model(str(gpt2_dir))
    examples = load_examples(str(dialogues)).examples
    prompts = build_prompts(loaded, examples, examples, 2, seed=0, same_source=True, max_new_tokens=8, truncate_shots=False)
    for prompt, query in zip(prompts, examples):
        parts = prompt.text.split(SHOT_SEPARATOR)
        assert len(parts) == 3 and parts[-1] == query.prompt and prompt.shots == 2
        assert all(part.split("\n")[1] for part in parts[:2])  # each shot carries its completion


def test_too_long_prompt_is_an_error_or_loses_shots(tmp_path):
    from conftest import build

    small = build("gpt2", tmp_path / "small", context=64)
    loaded = load_model(str(small))
    data = write_jsonl(tmp_path / "d.jsonl", dialogue_rows(8))
    examples = load_examples(str(data)).examples
    with pytest.raises(UserError, match="context window of 64; use fewer --shots or --truncate-shots"):
        build_prompts(loaded, examples, examples, 5, seed=0, same_source=True, max_new_tokens=8, truncate_shots=False)
    prompts = build_prompts(loaded, examples, examples, 5, seed=0, same_source=True, max_new_tokens=8, truncate_shots=True)
    assert all(p.shots < 5 for p in prompts)
    assert all(len(loaded.tokenizer(p.text).input_ids) + 8 <= 64 for p in prompts)


def test_parse_shots():
    assert parse_shots("0,1,5") == [0, 1, 5]
    for bad in ("a", "-1", "1,1", ""):
        with pytest.raises(UserError, match="--shots"):
            parse_shots(bad)


def test_not_enough_shot_examples(gpt2_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", dialogue_rows(3))
    examples = load_examples(str(data)).examples
    with pytest.raises(UserError, match="5 shots asked for"):
        build_prompts(load_model(str(gpt2_dir)), examples, examples, 5, seed=0, same_source=True, max_new_tokens=4, truncate_shots=False)
