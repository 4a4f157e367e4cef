"""DPO end to end on tiny models of both kinds; its loss against trl's and the DPO paper's; resume; bad input."""

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import NAMES, TASKS, build, run_cli, write_jsonl
from safetensors.torch import load_file

from llmcycle.align.dpo import DPOConfig, dpo, dpo_loss, pair_batch, sequence_log_probs, tokenize_pairs
from llmcycle.data.preferences import Pair


def preference_rows(count: int, offset: int = 0) -> list[dict]:
    """The chosen answer says yes, the rejected one no."""
    rows = []
    for i in range(offset, offset + count):
        task, name = TASKS[i % len(TASKS)], NAMES[(i * 5) % len(NAMES)]
        rows.append({"prompt": f"{name} asks: can you {task}?", "chosen": f" yes, I will {task}.",
                     "rejected": f" no, I will not {task}."})
    return rows


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """Tiny models without dropout."""
    root = tmp_path_factory.mktemp("quiet")
    return {arch: build(arch, root / arch, dropout=0.0) for arch in ("t5", "gpt2")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    return {"train": write_jsonl(root / "train.jsonl", preference_rows(16)),
            "eval": write_jsonl(root / "eval.jsonl", preference_rows(8, offset=100))}


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def eval_margin_in_plain_peft(base: Path, adapter: Path, eval_file: Path, is_encoder_decoder: bool) -> float:
    """The eval reward margin recomputed with nothing of llmcycle but the token layout."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    auto = AutoModelForSeq2SeqLM if is_encoder_decoder else AutoModelForCausalLM
    model = PeftModel.from_pretrained(auto.from_pretrained(base), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    pairs = [Pair(r["prompt"], r["chosen"], r["rejected"], "") for r in map(json.loads, eval_file.read_text().splitlines())]
    batch = pair_batch(tokenize_pairs(pairs, tokenizer, is_encoder_decoder, 512, "eval"), tokenizer.pad_token_id, is_encoder_decoder)
    with torch.no_grad():
        policy = sequence_log_probs(model, batch, is_encoder_decoder)
        with model.disable_adapter():
            reference = sequence_log_probs(model, batch, is_encoder_decoder)
    _, chosen, rejected = dpo_loss(*policy.chunk(2), *reference.chunk(2), beta=0.1)
    return (chosen - rejected).mean().item()


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_dpo_raises_the_reward_margin_and_the_adapter_loads_in_plain_peft(arch, quiet, data, tmp_path):
    out = tmp_path / "dpo"
    args = ["align", "--method", "dpo", "--model", quiet[arch], "--data", data["train"], "--eval-data", data["eval"],
            "--out", out, "--lr", "1e-2", "--max-steps", "8", "--batch-size", "4"]
    if arch == "gpt2":
        assert run_cli(*args) == 0
        metrics = json.loads((out / "metrics.json").read_text())
    else:
        metrics = dpo(DPOConfig(model=str(quiet[arch]), data=str(data["train"]), eval_data=str(data["eval"]), out=str(out),
                                lr=1e-2, max_steps=8, batch_size=4))
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "config.yaml", "log.jsonl", "metrics.json"]
    lines = log(out)
    assert [line["step"] for line in lines] == list(range(1, 9))
    assert {"loss", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected", "lr"} <= set(lines[0])
    # Before the first update the policy is the reference: margin 0, loss log 2.
    assert lines[0]["reward_margin"] == pytest.approx(0, abs=1e-5) and lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert lines[-1]["reward_margin"] > lines[0]["reward_margin"] + 0.5
    assert lines[-1]["reward_accuracy"] > lines[0]["reward_accuracy"]
    assert metrics["reward_on"] == "eval" and metrics["reward_margin"] > 0.5 and metrics["reward_accuracy"] >= 0.75
    assert metrics["eval_loss"] < math.log(2) and metrics["train_loss"] < lines[0]["loss"]
    assert set(metrics) >= {"reward_margin", "reward_accuracy", "train_loss", "eval_loss", "trainable_params", "total_params",
                            "wall_time_s", "peak_memory_bytes", "size_on_disk_bytes"}
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    plain = eval_margin_in_plain_peft(quiet[arch], out / "adapter", data["eval"], arch == "t5")
    assert plain == pytest.approx(metrics["reward_margin"], abs=1e-4)


def test_full_fine_tuning_resumes_to_the_weights_of_an_uninterrupted_run(quiet, data, tmp_path):
    """The reference must stay the starting model, not the checkpoint's weights."""
    fields = {"model": str(quiet["gpt2"]), "data": str(data["train"]), "tune": "full", "lr": 1e-3, "max_steps": 6,
              "batch_size": 4, "save_every": 3}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    metrics = dpo(DPOConfig(out=str(whole), **fields))
    assert sorted(p.name for p in whole.iterdir()) == ["checkpoints", "config.yaml", "log.jsonl", "metrics.json", "model"]
    assert metrics["reward_on"].startswith("train") and metrics["reward_margin"] > 0 and metrics["eval_loss"] is None
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints/step-3", resumed / "checkpoints/step-3")
    shutil.copy(whole / "config.yaml", resumed / "config.yaml")
    dpo(DPOConfig(out=str(resumed), **fields), resume=True)
    expected, got = weights(whole / "model"), weights(resumed / "model")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)
    margins = [line["reward_margin"] for line in log(whole)]
    assert [line["reward_margin"] for line in log(resumed)] == pytest.approx(margins[3:], abs=1e-5)


def test_the_loss_is_the_dpo_papers():
    generator = torch.Generator().manual_seed(0)
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = (torch.randn(16, generator=generator) * 20 for _ in range(4))
    beta = 0.3
    losses, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    # Rafailov et al. (2023), eq. 7: -log sigma(beta log pi(yw)/pi_ref(yw) - beta log pi(yl)/pi_ref(yl))
    logits = beta * (policy_chosen - ref_chosen) - beta * (policy_rejected - ref_rejected)
    torch.testing.assert_close(losses, torch.log1p(torch.exp(-logits)))
    torch.testing.assert_close(chosen - rejected, logits)


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_sequence_log_probs_sum_to_minus_the_fine_tuning_loss(arch, quiet):
    from llmcycle.models import load_base
    from llmcycle.train.sft_data import completion_loss_sum

    loaded = load_base(str(quiet[arch]), torch_dtype=torch.float32)
    pairs = [Pair(r["prompt"], r["chosen"], r["rejected"], "") for r in preference_rows(5)]
    is_encoder_decoder, tokenizer = loaded.is_encoder_decoder, loaded.tokenizer
    batch = pair_batch(tokenize_pairs(pairs, tokenizer, is_encoder_decoder, 512, "x"), tokenizer.pad_token_id, is_encoder_decoder)
    with torch.no_grad():
        per_row = sequence_log_probs(loaded.model, batch, loaded.is_encoder_decoder)
        total = completion_loss_sum(loaded.model, batch, loaded.is_encoder_decoder)
    assert per_row.shape == (10,) and (per_row < 0).all()
    assert per_row.sum().item() == pytest.approx(-total.item(), rel=1e-5)


def test_loss_and_rewards_equal_trls_dpo_trainer(quiet, tmp_path):
    """Same pairs, policy and reference: trl's sigmoid loss and implicit rewards equal ours (trl tokenises the same here)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TrlConfig
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(quiet["gpt2"])
    reference = AutoModelForCausalLM.from_pretrained(quiet["gpt2"]).eval()
    policy = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    rows = [{"prompt": "Amy asks: can you plan a trip?", "chosen": " yes, I will plan a trip.", "rejected": " no."},
            {"prompt": "Ben asks: can you fix the printer?", "chosen": " yes, gladly.", "rejected": " no, I will not fix it."},
            {"prompt": "Dev asks: can you find a flat?", "chosen": " of course.", "rejected": " no way"}]
    batch = pair_batch(tokenize_pairs([Pair(**r, where="") for r in rows], tokenizer, False, 64, "x"), tokenizer.pad_token_id, False)
    with torch.no_grad():
        losses, chosen, rejected = dpo_loss(*sequence_log_probs(policy, batch, False).chunk(2),
                                            *sequence_log_probs(reference, batch, False).chunk(2), beta=0.1)

    # bf16=False: trl's default runs the reference under bf16 autocast, even on a CPU.
    args = TrlConfig(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True, beta=0.1, max_length=64,
                     per_device_train_batch_size=len(rows))
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    trl_batch = next(iter(trainer.get_train_dataloader()))  # all rows, in shuffled order: compare means
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trl_batch)
    logged = trainer._metrics["eval"]  # the model is in eval mode, so trl files the batch under eval
    assert trl_loss.item() == pytest.approx(losses.mean().item(), abs=1e-5)
    assert logged["rewards/chosen"][-1] == pytest.approx(chosen.mean().item(), abs=1e-5)
    assert logged["rewards/margins"][-1] == pytest.approx((chosen - rejected).mean().item(), abs=1e-5)


BAD = [
    ([{"prompt": "p", "chosen": "same", "rejected": "same"}], [], "line 1: fields 'chosen' and 'rejected' are equal"),
    ([{"prompt": "p", "responses": ["a", "b"], "ranking": [1]}], [], "'ranking' has 1 ranks for 2 responses"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}], ["--beta", "0"], "--beta must be above 0 (got 0"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}], ["--kl-coef", "0.1"], "--kl-coef does not apply to --method dpo"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}], ["--template", "t.yaml"], "--template does not apply to --method dpo"),
]


@pytest.mark.parametrize("rows,flags,message", BAD)
def test_bad_input_is_one_line_exit_2_and_no_folder(rows, flags, message, quiet, tmp_path, capsys):
    source = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "dpo"
    assert run_cli("align", "--method", "dpo", "--model", quiet["gpt2"], "--data", source, "--out", out, *flags) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and message in error[-1]
    assert not out.exists()
