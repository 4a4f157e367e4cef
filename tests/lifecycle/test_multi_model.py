"""Recipes over several models (lifecycle/multi_model.py): per-model stage changes, their errors, one process a model."""

import json

import pytest
import yaml
from conftest import build, run_cli, write_jsonl

from llmcycle.errors import UserError
from llmcycle.evaluate.metrics import repeats_sentence
from llmcycle.lifecycle.multi_model import model_data
from llmcycle.lifecycle.recipes import load_recipe

STAGES = [{"baseline": {"shots": [0]}}, {"finetune": {"name": "full", "method": "full", "lr": 1.0e-3, "max_steps": 2}}, {"report": {}}]


def test_each_model_gets_the_shared_stages_with_its_own_changes():
    data = {"models": {"a": "m1", "b": {"model": "m2", "stages": {"full": {"lr": 5.0e-4}, "baseline": {"shots": [0, 1]}}}},
            "data": {}, "stages": STAGES}
    models = model_data(data, "r.yaml")
    assert list(models) == ["a", "b"] and models["a"]["model"] == "m1" and models["b"]["model"] == "m2"
    assert models["a"]["stages"] == STAGES  # untouched, and the shared list was not changed in place
    assert models["b"]["stages"][1]["finetune"] == {"name": "full", "method": "full", "lr": 5.0e-4, "max_steps": 2}
    assert models["b"]["stages"][0]["baseline"] == {"shots": [0, 1]}


def test_a_model_may_change_the_generation_settings_for_itself():
    data = {"models": {"a": "m1", "b": {"model": "m2", "generation": {"no_repeat_ngram_size": 4}}},
            "generation": {"max_new_tokens": 32, "no_repeat_ngram_size": 0}, "data": {}, "stages": STAGES}
    models = model_data(data, "r.yaml")
    assert models["a"]["generation"] == {"max_new_tokens": 32, "no_repeat_ngram_size": 0}
    assert models["b"]["generation"] == {"max_new_tokens": 32, "no_repeat_ngram_size": 4}


@pytest.mark.parametrize("models, message", [
    ({"a": "m1", "b": {"model": "m2", "stages": {"lora": {"lr": 1}}}}, "models.b.stages: no stage is called 'lora'"),
    ({"A b": "m1"}, "a label is lower-case letters"),
    ({"a": {"stages": {}}}, "models.a: give a model"),
    ([], "'models' must map labels to models"),
    ({"a": {"model": "m1", "generation": [4]}}, "models.a.generation: map generation settings"),
    ({"a": {"model": "m1", "prompt": "x"}}, "models.a: give a model"),
])
def test_bad_models_are_one_line_errors(models, message):
    with pytest.raises(UserError, match=message):
        model_data({"models": models, "data": {}, "stages": STAGES}, "r.yaml")


@pytest.mark.slow
def test_two_models_run_side_by_side_in_processes(tmp_path, capsys):
    t5, llama = build("t5", tmp_path / "t5"), build("llama", tmp_path / "llama")
    rows = [{"prompt": f"Say {i}.", "completion": f"{i} {i}."} for i in range(6)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump({"name": "two", "models": {"t5": str(t5), "llama": {"model": str(llama), "stages": {"full": {"lr": 2.0e-3}}}},
                                      "data": {"train": str(data), "test": str(data)}, "generation": {"max_new_tokens": 4},
                                      "metrics": ["rouge", "repetition"], "stages": STAGES}, sort_keys=False))
    assert load_recipe(recipe).model == str(t5)  # the first model stands for the recipe where one is expected
    assert load_recipe(recipe, model=str(llama)).model == str(llama)
    out = tmp_path / "out"
    assert run_cli("run", recipe, "--out", out, "--jobs", "2") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["t5", "llama"] and all(list(block) == ["zero-shot", "full"] for block in metrics.values())
    assert yaml.safe_load((out / "llama/stages/02-finetune-full/run/config.yaml").read_text())["lr"] == 2.0e-3
    assert yaml.safe_load((out / "t5/stages/02-finetune-full/run/config.yaml").read_text())["lr"] == 1.0e-3
    assert (out / "t5/console.log").is_file() and "llama: stage 2/3 finetune-full done" in capsys.readouterr().err
    html = (out / "report.html").read_text()
    assert "t5 and llama side by side" in html and f"llmcycle serve --model {t5}" in html


@pytest.mark.slow
def test_a_failing_model_stops_the_run_with_its_error(tmp_path, capsys):
    t5 = build("t5", tmp_path / "t5")
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "completion": "b"}] * 4)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"models": {"good": str(t5), "gone": str(tmp_path / "no-such-model")},
                                      "data": {"train": str(data), "test": str(data)}, "stages": STAGES}, sort_keys=False))
    assert run_cli("run", recipe, "--out", tmp_path / "out") == 2
    assert "gone: " in capsys.readouterr().err


def test_repetition_counts_a_sentence_said_three_times():
    assert repeats_sentence("Nina calls Chloe a loser. Nina calls Chloe a loser. Ann agrees. nina calls chloe a loser.")
    assert not repeats_sentence("A plan. A plan. Another one.")
    assert not repeats_sentence("")
