"""The items: K distinct non-empty completions per prompt, sampled (seeded) from a model or spread over adapters,
kept beside the rankings file for a restart, or read from a completions file; bad inputs stop before any write."""

from __future__ import annotations

import json

import pytest
from conftest import lora_adapter, run_cli, write_jsonl
from labeling import write_completions

from llmcycle.data.options import DataOptions
from llmcycle.errors import UserError
from llmcycle.generate.settings import GenerationSettings
from llmcycle.label import completions
from llmcycle.label.completions import (
    GenerationRequest,
    file_sha256,
    generated_items,
    items_path,
    read_completions,
)
from llmcycle.label.session import LabelRequest, check_request, prepare
from llmcycle.models import ModelOptions

PROMPTS = [{"prompt": f"Summarize: {name} and Ben. #Person1#: can we book a table today? Summary:"} for name in ("Amy", "Dev", "Farid")]
SETTINGS = GenerationSettings(max_new_tokens=8, do_sample=True, top_p=0.95, seed=3, batch_size=4)


def request_for(model_dir, prompts, k=3, adapters=()) -> GenerationRequest:
    return GenerationRequest(str(model_dir), tuple(adapters), str(prompts), file_sha256(str(prompts)), k, SETTINGS)


def test_k_distinct_completions_per_prompt_seeded_and_kept_for_a_restart(gpt2_dir, tmp_path, monkeypatch):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    request = request_for(gpt2_dir, prompts)
    items = generated_items(request, ModelOptions(str(gpt2_dir)), DataOptions(str(prompts)), tmp_path / "r.jsonl")
    assert len(items) == 3 and all(item.k == 3 for item in items)
    for item in items:
        assert all(text.strip() for text in item.responses) and len(set(item.responses)) == 3
        assert item.sources == (str(gpt2_dir),) * 3
    assert items_path(tmp_path / "r.jsonl").is_file()
    again = generated_items(request, ModelOptions(str(gpt2_dir)), DataOptions(str(prompts)), tmp_path / "other.jsonl")
    assert again == items  # the same seed samples the same completions
    monkeypatch.setattr(ModelOptions, "load", lambda self: pytest.fail("a restart must not load the model"))
    assert generated_items(request, ModelOptions(str(gpt2_dir)), DataOptions(str(prompts)), tmp_path / "r.jsonl") == items
    with pytest.raises(UserError, match=r"r.items.jsonl holds completions made with other settings \(k differ\)"):
        generated_items(request_for(gpt2_dir, prompts, k=2), ModelOptions(str(gpt2_dir)), DataOptions(str(prompts)), tmp_path / "r.jsonl")


def test_completions_spread_over_base_and_adapters(gpt2_dir, tmp_path):
    adapter = lora_adapter(gpt2_dir, tmp_path / "lora")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:2])
    model = ModelOptions(str(gpt2_dir), adapters=[("lora", str(adapter))])
    items = generated_items(request_for(gpt2_dir, prompts, k=4, adapters=[("lora", str(adapter))]), model,
                            DataOptions(str(prompts)), tmp_path / "r.jsonl")
    assert [item.sources for item in items] == [("base", "lora", "base", "lora")] * 2
    assert all(len(set(item.responses)) == 4 for item in items)


def test_an_adapter_run_samples_with_its_own_adapter_on(gpt2_dir, tmp_path):
    adapter = lora_adapter(gpt2_dir, tmp_path / "lora")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:2])
    request = request_for(adapter, prompts, k=2)
    items = generated_items(request, ModelOptions(str(adapter)), DataOptions(str(prompts)), tmp_path / "r.jsonl")
    base = generated_items(request_for(gpt2_dir, prompts, k=2), ModelOptions(str(gpt2_dir)), DataOptions(str(prompts)), tmp_path / "b.jsonl")
    assert [item.sources for item in items] == [(str(adapter),) * 2] * 2
    assert [item.responses for item in items] != [item.responses for item in base]  # the adapter wrote them


def test_a_prompt_without_k_distinct_completions_is_skipped_and_named(gpt2_dir, tmp_path, monkeypatch, capsys):
    from llmcycle.generate import engine

    def stubborn(loaded, prompts, settings, description=""):  # one prompt only ever gets the same completion
        return ["same" if "Dev" in prompt else f"{prompt[-12:]} {settings.seed} {index}" for index, prompt in enumerate(prompts)]

    monkeypatch.setattr(engine, "generate", stubborn)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    items = generated_items(request_for(gpt2_dir, prompts), ModelOptions(str(gpt2_dir)), DataOptions(str(prompts)), tmp_path / "r.jsonl")
    assert [item.where for item in items] == [f"{prompts} line 1", f"{prompts} line 3"]
    assert f"skipped 1 prompts without 3 distinct non-empty completions after {completions.RESAMPLE_ROUNDS} resamples: " \
           f"{prompts} line 2" in " ".join(capsys.readouterr().err.split())
    header = json.loads(items_path(tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert header["skipped"] == [f"{prompts} line 2"]  # said again when a restart reuses the items


@pytest.mark.parametrize("row, k, message", [
    ({"prompt": "p", "responses": ["a"]}, None, "line 2: field 'responses' must be a list of at least two"),
    ({"prompt": "p", "responses": ["a", " "]}, None, "line 2: field 'responses' must be a list of at least two non-empty"),
    ({"prompt": "p", "responses": ["a", "a "]}, None, "line 2: field 'responses' repeats a response"),
    ({"prompt": "", "responses": ["a", "b"]}, None, "line 2: field 'prompt' must be a non-empty string"),
    ({"prompt": "p", "responses": ["a", "b"]}, 3, "line 2: field 'responses' holds 2 responses; --k is 3"),
    ({"prompt": "p", "responses": [str(i) for i in range(10)]}, None, "line 2: field 'responses' holds 10 responses; the page ranks at most 9"),
    ({"prompt": "p", "responses": ["a", "b"], "sources": ["m"]}, None, "line 2: field 'sources' must be a list of strings, one per"),
    ({"prompt": "Question 0: what now? <b>bold?</b>", "responses": ["x", "y"]}, None, None),
])
def test_a_bad_completions_file_names_line_and_field(tmp_path, row, k, message):
    path = write_completions(tmp_path / "c.jsonl", 1)
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    if message is None:
        assert len(read_completions(str(path), k)) == 2
        return
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        read_completions(str(path), k)


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 is not a loopback address"),
    (["--host", "example.org"], "--host example.org is not a loopback address"),
    (["--k", "10"], "--k must be between 2 and 9"),
    (["--labelers", "LABELERS", "--overlap", "3"], "--overlap 3 needs between 1 and 2"),
    (["--model", "m"], "--model samples completions for --prompts"),
    (["--completions", "BAD"], "bad.jsonl line 1: field 'responses' must be a list"),
    (["--labelers", "BADLABELERS"], "line 1: expected 'name token'"),
])
def test_bad_flags_and_files_stop_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    good = write_completions(tmp_path / "good.jsonl", 2)
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p"}])
    (tmp_path / "labelers.txt").write_text("ann t1\nbob t2\n")
    (tmp_path / "bad-labelers.txt").write_text("ann\n")
    names = {"LABELERS": tmp_path / "labelers.txt", "BADLABELERS": tmp_path / "bad-labelers.txt", "BAD": tmp_path / "bad.jsonl"}
    args = [str(names.get(arg, arg)) for arg in args]
    if "--completions" not in args:
        args += ["--completions", str(good)]
    assert run_cli("label", *args, "--out", tmp_path / "out" / "r.jsonl", "--port", "0") == 2
    error = capsys.readouterr().err.strip()
    assert message in " ".join(error.split()) and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_prompts_without_a_model_and_a_bad_prompts_file(tmp_path, capsys, gpt2_dir):
    assert run_cli("label", "--prompts", "p.jsonl", "--out", tmp_path / "r.jsonl") == 2
    assert "--prompts needs --model" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "prompts.jsonl", [PROMPTS[0], {"text": "no prompt"}])
    assert run_cli("label", "--model", gpt2_dir, "--prompts", bad, "--out", tmp_path / "r.jsonl", "--port", "0") == 2
    assert "prompts.jsonl line 2: unknown layout" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]


def test_prepare_samples_then_opens_the_rankings_file(tmp_path, gpt2_dir):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:2])
    request = LabelRequest(out=str(tmp_path / "r.jsonl"), prompts=DataOptions(str(prompts)), model=ModelOptions(str(gpt2_dir)),
                           k=2, settings=SETTINGS)
    queues, store = prepare(request, check_request(request))
    try:
        assert len(queues.items) == 2 and (tmp_path / "r.jsonl").read_text() == ""
        assert all(item.k == 2 for item in queues.items.values())
    finally:
        store.close()
