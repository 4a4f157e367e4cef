"""Training on two CPU processes (gloo): DDP and FSDP through the CLI, against one-process runs.

Each multi-process run starts two Python processes, so these tests keep their number small: one run per
claim, on tiny models without dropout, where runs that should be equal are equal to float precision.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build, dialogue_rows, run_cli, write_jsonl
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    return {arch: build(arch, root / arch, dropout=0.0) for arch in ("t5", "gpt2")}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", dialogue_rows(16))  # whole global batches


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    preference = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "You idiot, " + r["completion"].lower()}
                  for r in dialogue_rows(16)]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", preference)


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def resumed_copy(run: Path, step: int, target: Path) -> Path:
    """A run folder as a run killed right after checkpoint `step` leaves it."""
    target.mkdir()
    shutil.copytree(run / "checkpoints" / f"step-{step}", target / "checkpoints" / f"step-{step}")
    config = (run / "config.yaml").read_text().replace(f"out: {run}", f"out: {target}")
    (target / "config.yaml").write_text(config)
    (target / "log.jsonl").write_text("".join(line + "\n" for line in (run / "log.jsonl").read_text().splitlines()[:step]))
    return target / "config.yaml"


FINETUNE = ["--method", "lora", "--lr", "3e-2", "--lora-dropout", "0", "--max-steps", "4"]


@pytest.mark.slow
def test_ddp_matches_one_process_on_the_same_global_batch(quiet, rows, tmp_path):
    """2 processes x batch 2 x accumulation 2 take the steps of 1 process x batch 8."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("finetune", "-m", quiet["gpt2"], "-d", rows, "-o", one, *FINETUNE, "--batch-size", "8") == 0
    assert run_cli("finetune", "-m", quiet["gpt2"], "-d", rows, "-o", two, *FINETUNE, "--batch-size", "2",
                   "--grad-accum", "2", "--num-processes", "2", "--strategy", "ddp") == 0
    assert [r["loss"] for r in log(two)] == pytest.approx([r["loss"] for r in log(one)], rel=1e-5)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 8
    assert json.loads((one / "metrics.json").read_text())["world_size"] == 1
    for name, tensor in weights(one / "adapter").items():
        torch.testing.assert_close(weights(two / "adapter")[name], tensor, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_resumed_run_equals_an_uninterrupted_one(strategy, quiet, rows, tmp_path):
    whole = tmp_path / "whole"
    assert run_cli("finetune", "-m", quiet["gpt2"], "-d", rows, "-o", whole, *FINETUNE, "--batch-size", "4",
                   "--num-processes", "2", "--strategy", strategy, "--save-every", "2") == 0
    config = resumed_copy(whole, 2, tmp_path / "resumed")
    assert run_cli("finetune", "--config", config, "--resume") == 0
    assert [r["loss"] for r in log(tmp_path / "resumed")] == [r["loss"] for r in log(whole)]
    first, second = weights(whole / "adapter"), weights(tmp_path / "resumed/adapter")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_fsdp_full_fine_tuning_writes_a_plain_transformers_model(quiet, rows, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    one, two = tmp_path / "one", tmp_path / "two"
    flags = ["--method", "full", "--lr", "3e-3", "--max-steps", "3"]
    assert run_cli("finetune", "-m", quiet["t5"], "-d", rows, "-o", one, *flags, "--batch-size", "8") == 0
    assert run_cli("finetune", "-m", quiet["t5"], "-d", rows, "-o", two, *flags, "--batch-size", "4",
                   "--num-processes", "2", "--strategy", "fsdp") == 0
    assert [r["loss"] for r in log(two)] == pytest.approx([r["loss"] for r in log(one)], rel=1e-5)
    model = AutoModelForSeq2SeqLM.from_pretrained(two / "model")  # gathered from the shards: whole tensors
    assert json.loads((two / "model/config.json").read_text())["architectures"] == ["T5ForConditionalGeneration"]
    reference = AutoModelForSeq2SeqLM.from_pretrained(one / "model")
    # Logits, not raw weights: where a gradient is ~0, Adam turns float noise into whole steps (see test_finetune).
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, labels=ids).logits, reference(input_ids=ids, labels=ids).logits,
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_fsdp_prompt_tuning_saves_the_trained_virtual_tokens(quiet, rows, tmp_path):
    """peft computes the prompt embeddings it saves from the live module, which FSDP holds in shards."""
    flags = ["-m", quiet["gpt2"], "-d", rows, "--method", "prompt-tuning", "--num-virtual-tokens", "4", "--max-steps", "2"]
    assert run_cli("finetune", *flags, "-o", tmp_path / "one", "--batch-size", "8") == 0
    assert run_cli("finetune", *flags, "-o", tmp_path / "two", "--batch-size", "4", "--num-processes", "2", "--strategy", "fsdp") == 0
    one, two = weights(tmp_path / "one/adapter"), weights(tmp_path / "two/adapter")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_reward_and_dpo_on_two_processes_match_one(quiet, pairs, tmp_path):
    reward_flags = ["-m", quiet["gpt2"], "-d", pairs, "--max-steps", "2", "--lr", "1e-3"]
    assert run_cli("reward", *reward_flags, "-o", tmp_path / "r1", "--batch-size", "8") == 0
    assert run_cli("reward", *reward_flags, "-o", tmp_path / "r2", "--batch-size", "4", "--num-processes", "2") == 0
    assert [r["loss"] for r in log(tmp_path / "r2")] == pytest.approx([r["loss"] for r in log(tmp_path / "r1")], rel=1e-5)
    scored = [json.loads((tmp_path / name / "metrics.json").read_text())["mean_margin"] for name in ("r1", "r2")]
    assert scored[1] == pytest.approx(scored[0], rel=1e-4)

    dpo_flags = ["--method", "dpo", "-m", quiet["t5"], "-d", pairs, "--max-steps", "2", "--lr", "1e-2", "--eval-data", pairs]
    assert run_cli("align", *dpo_flags, "-o", tmp_path / "d1", "--batch-size", "8") == 0
    assert run_cli("align", *dpo_flags, "-o", tmp_path / "d2", "--batch-size", "4", "--num-processes", "2", "--strategy", "fsdp") == 0
    assert [r["loss"] for r in log(tmp_path / "d2")] == pytest.approx([r["loss"] for r in log(tmp_path / "d1")], rel=1e-5)
    evals = [json.loads((tmp_path / name / "metrics.json").read_text())["eval_loss"] for name in ("d1", "d2")]
    assert evals[1] == pytest.approx(evals[0], rel=1e-5)


@pytest.mark.slow
def test_ppo_on_two_fsdp_processes_writes_the_run_and_resumes_exactly(quiet, rows, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    whole = tmp_path / "whole"
    assert run_cli("align", "--method", "ppo", "-m", quiet["t5"], "-d", rows, "-o", whole, "--reward", "word=summary",
                   "--max-steps", "3", "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "6",
                   "--num-processes", "2", "--strategy", "fsdp", "--save-every", "2") == 0
    assert sorted(p.name for p in whole.iterdir()) == ["adapter", "checkpoints", "config.yaml", "log.jsonl", "metrics.json",
                                                       "value_head.safetensors"]
    assert all(r["response_tokens"] > 0 for r in log(whole))
    PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(quiet["t5"]), whole / "adapter")
    assert run_cli("align", "--method", "ppo", "--config", resumed_copy(whole, 2, tmp_path / "resumed"), "--resume") == 0
    for name in ("adapter/adapter_model.safetensors", "value_head.safetensors"):
        first, second = load_file(whole / name), load_file(tmp_path / "resumed" / name)
        assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_pretraining_on_two_fsdp_processes_matches_one(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{r['prompt']} {r['completion']}\n" for r in dialogue_rows(40)))
    flags = ["--corpus", corpus, "--arch", "t5", "--layers", "2", "--hidden", "64", "--vocab-size", "500", "--dropout", "0",
             "--max-length", "64", "--max-steps", "3"]
    assert run_cli("pretrain", *flags, "-o", tmp_path / "one", "--batch-size", "8") == 0
    assert run_cli("pretrain", *flags, "-o", tmp_path / "two", "--batch-size", "4", "--num-processes", "2", "--strategy", "fsdp") == 0
    assert [r["loss"] for r in log(tmp_path / "two")] == pytest.approx([r["loss"] for r in log(tmp_path / "one")], rel=1e-5)
    assert (tmp_path / "two/model/tokenizer.json").is_file()


@pytest.mark.slow
def test_an_outside_torchrun_launch_is_recognised_and_resumes(quiet, rows, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "llmcycle",
               "finetune", "-m", str(quiet["gpt2"]), "-d", str(rows), "-o", str(out), *FINETUNE, "--batch-size", "4",
               "--save-every", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 processes (ddp, gloo)" in done.stderr
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    assert "num_processes: 2" in (out / "config.yaml").read_text()  # the saved config reruns on 2 processes
    uninterrupted = weights(out / "adapter")
    shutil.rmtree(out / "adapter")  # as if killed after the step-2 checkpoint
    (out / "metrics.json").unlink()
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    assert all(torch.equal(uninterrupted[k], v) for k, v in weights(out / "adapter").items())


@pytest.mark.slow
def test_a_worker_error_is_one_line_and_exit_2_with_nothing_written(quiet, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine", "completion": "fine"}, {"prompt": 3, "completion": "x"}])
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "llmcycle", "finetune", "-m", str(quiet["gpt2"]), "-d", str(bad), "-o", str(out),
                           "--num-processes", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad} line 2: field 'prompt' is not a string (got int)"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--num-processes", "0"], "--num-processes must be at least 1"),
    (["--num-processes", "512"], "--num-processes 512 is more than this machine runs in parallel"),
    (["--strategy", "zero4"], "unknown --strategy 'zero4'; use ddp or fsdp"),
    (["--deepspeed", "zero1"], "unknown --deepspeed 'zero1'; use zero2 or zero3"),
    (["--deepspeed", "zero2", "--strategy", "fsdp"], "choose one"),
    (["--method", "qlora", "--num-processes", "2", "--strategy", "fsdp"], "--method qlora trains on several processes with --strategy ddp only"),
])
def test_bad_distributed_settings_are_one_line_errors(flags, message, quiet, rows, tmp_path, capsys):
    assert run_cli("finetune", "-m", quiet["gpt2"], "-d", rows, "-o", tmp_path / "run", *flags) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_deepspeed_missing_is_a_clear_error(quiet, rows, tmp_path, capsys):
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("deepspeed is installed here")
    assert run_cli("align", "--method", "dpo", "-m", quiet["gpt2"], "-d", rows, "-o", tmp_path / "run", "--deepspeed", "zero3") == 2
    assert "--deepspeed needs the deepspeed package: pip install deepspeed" in capsys.readouterr().err


@pytest.mark.slow
def test_deepspeed_zero3_takes_the_steps_ddp_takes(quiet, rows, tmp_path):
    """Runs where the deepspeed package is installed (pip install llmcycle[deepspeed]); CPU works too."""
    pytest.importorskip("deepspeed")
    flags = ["-m", quiet["gpt2"], "-d", rows, *FINETUNE, "--batch-size", "2", "--grad-accum", "2", "--num-processes", "2"]
    assert run_cli("finetune", *flags, "-o", tmp_path / "ddp") == 0
    assert run_cli("finetune", *flags, "-o", tmp_path / "zero3", "--deepspeed", "zero3") == 0
    assert [r["loss"] for r in log(tmp_path / "zero3")] == pytest.approx([r["loss"] for r in log(tmp_path / "ddp")], rel=1e-5)
    assert (tmp_path / "zero3/adapter/adapter_model.safetensors").is_file()
