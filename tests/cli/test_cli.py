"""Every verb from the command line, and the one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
from conftest import dialogue_rows, run_cli, write_jsonl


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_generate_one_prompt_prints_the_completion(model_dir, capsys):
    assert run_cli("generate", "--model", model_dir, "--prompt", "Summarize: Amy", "--max-new-tokens", "5") == 0
    assert capsys.readouterr().out.strip()


def test_generate_data_writes_predictions_in_input_order(model_dir, dialogues, tmp_path):
    out = tmp_path / "preds.jsonl"
    assert run_cli("generate", "-m", model_dir, "-d", dialogues, "-o", out, "--max-new-tokens", "6", "--batch-size", "5") == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    rows = dialogue_rows(12)
    assert [r["prompt"] for r in records] == [r["prompt"] for r in rows]
    assert [r["reference"] for r in records] == [r["completion"] for r in rows]
    assert all(isinstance(r["prediction"], str) for r in records)


def test_generate_without_references_and_sampling_flags(gpt2_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "hello"}, {"prompt": "plan a trip"}])
    args = ["generate", "-m", gpt2_dir, "-d", data, "--do-sample", "--temperature", "0.7", "--top-k", "20", "--top-p", "0.9", "--seed", "7", "--max-new-tokens", "4"]
    assert run_cli(*args) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert run_cli(*args) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == first
    assert all("reference" not in r for r in first)


def test_prompt_side_by_side_shots(model_dir, dialogues, tmp_path, capsys):
    out = tmp_path / "icl.jsonl"
    metrics_out = tmp_path / "icl-metrics.json"
    code = run_cli("prompt", "-m", model_dir, "-d", dialogues, "--shots", "0,1,3", "-o", out, "--metrics-out", metrics_out, "--max-new-tokens", "6")
    assert code == 0
    for k in (0, 1, 3):
        records = [json.loads(line) for line in (tmp_path / f"icl.{k}-shot.jsonl").read_text().splitlines()]
        assert len(records) == 12 and {r["shots"] for r in records} == {k}
        assert all(r["prompt"].count("Summary:") == k + 1 for r in records)
    assert not out.exists()
    metrics = json.loads(metrics_out.read_text())
    assert list(metrics) == ["zero-shot", "one-shot", "3-shot"]
    assert set(metrics["zero-shot"]["rougeL"]) >= {"mean", "ci95", "n"}
    assert "change" in metrics["3-shot"]["rougeL"]
    table = capsys.readouterr().out
    assert "zero-shot" in table and "rougeLsum" in table


def test_prompt_with_shot_data_and_template(gpt2_dir, tmp_path):
    template = tmp_path / "t.yaml"
    template.write_text('prompt: "Headline: {body}"\ncompletion: "{title}"\n')
    rows = [{"body": f"review number {i} of the shoes", "title": f"title {i}"} for i in range(6)]
    test, train = write_jsonl(tmp_path / "test.jsonl", rows[:2]), write_jsonl(tmp_path / "train.jsonl", rows[2:])
    out = tmp_path / "p.jsonl"
    assert run_cli("prompt", "-m", gpt2_dir, "-d", test, "--shot-data", train, "--template", template, "--shots", "2", "-o", out, "--max-new-tokens", "3") == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["prompt"].count("Headline:") == 3 and "title 0" not in r["prompt"] for r in records)


def test_eval_predictions_writes_the_metrics_contract(tmp_path):
    preds = write_jsonl(tmp_path / "a.jsonl", [{"prediction": "the cat sat", "reference": "the cat sat down"}, {"prediction": "hi", "reference": "hello"}])
    out = tmp_path / "m.json"
    assert run_cli("eval", "--predictions", preds, "--metrics", "rouge,bleu,exact_match,toxicity", "--out", out) == 0
    metrics = json.loads(out.read_text())
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match", "toxicity"} <= set(metrics)
    for summary in metrics.values():
        assert isinstance(summary["mean"], float) and len(summary["ci95"]) == 2 and summary["n"] == 2


def test_eval_compares_several_files(tmp_path, capsys):
    a = write_jsonl(tmp_path / "base.jsonl", [{"prediction": "x y", "reference": "the cat sat"}] * 3)
    b = write_jsonl(tmp_path / "tuned.jsonl", [{"prediction": "the cat sat", "reference": "the cat sat"}] * 3)
    out = tmp_path / "m.json"
    assert run_cli("eval", "-P", a, "-P", b, "-o", out) == 0
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["base", "tuned"]
    assert metrics["tuned"]["rouge1"]["change"]["absolute"] == pytest.approx(1.0)
    assert "+1.0000" in capsys.readouterr().out


def test_eval_model_on_data_with_perplexity(model_dir, dialogues, tmp_path):
    out, preds = tmp_path / "m.json", tmp_path / "p.jsonl"
    code = run_cli("eval", "-m", model_dir, "-d", dialogues, "--metrics", "rouge,perplexity", "-o", out, "--save-predictions", preds, "--max-new-tokens", "6")
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["perplexity"]["mean"] > 1 and metrics["rougeL"]["n"] == 12
    assert len(preds.read_text().splitlines()) == 12


BAD_INPUTS = [
    (["generate", "--model", "{tmp}/no-such-model", "--prompt", "hi"], "does not exist"),
    (["generate", "--model", "{gpt2}", "--prompt", "hi", "--temperature", "-1", "--do-sample"], "--temperature"),
    (["generate", "--model", "{gpt2}", "--prompt", "hi", "--dtype", "float8"], "--dtype"),
    (["generate", "--model", "{gpt2}", "--data", "{bad}", "--out", "{out}"], "bad.jsonl line 2: not valid JSON"),
    (["generate", "--model", "{gpt2}"], "exactly one of --prompt TEXT or --data FILE"),
    (["eval", "--predictions", "{bad}", "--out", "{out}"], "bad.jsonl line 2: not valid JSON"),
    (["eval", "--predictions", "{nopred}", "--out", "{out}"], "line 1: field 'prediction' is missing"),
    (["eval", "--predictions", "{good}", "--metrics", "rogue", "--out", "{out}"], "unknown metric 'rogue'"),
    (["prompt", "--model", "{gpt2}", "--data", "{good}", "--shots", "x", "--out", "{out}"], "--shots"),
    (["prompt", "--model", "{gpt2}", "--data", "{empty}", "--out", "{out}"], "the file is empty"),
    (["generate", "--model", "{gpt2}", "--data", "{binary}", "--out", "{out}"], "binary file"),
    (["generate", "--model", "{gpt2}", "--prompt", "hi", "--adapter", "nameonly"], "--adapter 'nameonly': write NAME=DIR"),
    (["eval", "--predictions", "{good}", "--no-such-flag"], "No such option"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, message, gpt2_dir, tmp_path, capsys):
    files = {
        "bad": write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "a"}', "{oops"]),
        "good": write_jsonl(tmp_path / "good.jsonl", [{"prompt": "a", "prediction": "b", "reference": "b"}]),
        "nopred": write_jsonl(tmp_path / "nopred.jsonl", [{"prompt": "a"}]),
    }
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    values = {"tmp": tmp_path, "gpt2": gpt2_dir, "out": tmp_path / "out.json", "empty": tmp_path / "empty.jsonl", "binary": tmp_path / "binary.jsonl", **files}
    before = set(tmp_path.rglob("*"))
    assert run_cli(*[arg.format(**values) for arg in args]) == 2
    assert message in error_line(capsys)
    assert set(tmp_path.rglob("*")) == before


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert run_cli("--debug", "generate", "--model", str(tmp_path / "nope"), "--prompt", "hi") == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_runs_as_a_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "llmcycle.cli", "eval", "--predictions", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: data file {tmp_path / 'missing.jsonl'} does not exist"]


def _lora_adapter(base_dir, out, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=64, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False))
    model.save_pretrained(out)
    return out


def test_several_adapters_on_one_base_switched_per_call(gpt2_dir, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first, second = _lora_adapter(gpt2_dir, tmp_path / "a", 1), _lora_adapter(gpt2_dir, tmp_path / "b", 2)
    prompt = "Summarize: Amy and Ben. #Person1#: can we book a table today? Summary:"
    outputs = {}
    for use in ("summarise", "detox", "base"):
        args = ["generate", "-m", gpt2_dir, "-p", prompt, "--max-new-tokens", "8", "--adapter", f"summarise={first}", "--adapter", f"detox={second}", "--use", use]
        assert run_cli(*args) == 0
        outputs[use] = capsys.readouterr().out.strip()
    assert len(set(outputs.values())) == 3
    # The same adapter through plain peft gives the same text.
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gpt2_dir), second).eval()
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        tokens = plain.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(tokens[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip() == outputs["detox"]
    assert run_cli("generate", "-m", gpt2_dir, "-p", prompt, "--adapter", f"a={first}", "--use", "zzz") == 2
    assert "no adapter of that name" in error_line(capsys)


def test_hub_dataset_id_offline_is_a_clear_error(gpt2_dir, capsys):
    assert run_cli("generate", "-m", gpt2_dir, "-d", "someone/some-dataset", "--split", "test") == 2
    assert "not a local file and could not be loaded from the hub" in error_line(capsys)
