"""The detox lab's flow: LoRA fine-tune, then PPO (or DPO) on that PEFT model.

The SFT adapter keeps training; the reference for the KL penalty is the SFT model as it was (the same adapter
loaded frozen on the same base), so the KL is 0 at the first step. The test's own rude model answers half of its
prompts with an insult; PPO against the toxicity reward makes it polite.
"""

import json

import numpy as np
import pytest
import torch
from conftest import build, run_cli, write_jsonl

from llmcycle.align.dpo import DPOConfig, dpo
from llmcycle.align.ppo import PPOConfig, ppo
from llmcycle.evaluate.metrics import toxicity_scores
from llmcycle.train.finetune import FinetuneConfig, finetune

RUDE, POLITE = "you stupid idiot", "thank you kindly"
THINGS = ["lamp", "chair", "book", "cup", "door", "shoe", "coat", "pen"]


@pytest.fixture(scope="module")
def rude_sft(tmp_path_factory):
    """A tiny GPT-2 with a LoRA adapter fine-tuned to answer half its prompts rudely, and the prompts."""
    root = tmp_path_factory.mktemp("detox")
    rows = [{"prompt": f"Tell me about the {t}.", "completion": RUDE if i % 2 else POLITE} for i, t in enumerate(THINGS)] * 4
    base = build("gpt2", root / "base", dropout=0.0)
    finetune(FinetuneConfig(model=str(base), data=str(write_jsonl(root / "sft.jsonl", rows)), out=str(root / "sft"),
                            method="lora", lora_rank=16, lora_targets="all-linear", lr=2e-2, max_steps=60, batch_size=8,
                            lora_dropout=0.0))
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])
    return base, root / "sft", prompts


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ppo_continues_the_lora_run_against_itself_and_detoxifies(rude_sft, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, sft, prompts = rude_sft
    out = tmp_path / "ppo"
    # A model this small samples noise at temperature 1; at 0.4 its rollouts are its answers (half of them rude).
    metrics = ppo(PPOConfig(model=str(sft), data=str(prompts), out=str(out), reward=["toxicity"], max_steps=16, batch_size=16,
                            mini_batch_size=8, ppo_epochs=4, max_new_tokens=12, temperature=0.4, lr=1e-2, kl_coef=0.02))
    log = _log(out)
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the SFT model, not the bare base
    rewards = [record["reward"] for record in log]  # 1 - toxicity
    assert rewards[0] < 0.75  # the SFT model's rollouts: about half of them insults
    assert np.mean(rewards[-4:]) > rewards[0] + 0.15, rewards
    assert metrics["kl_first"] == pytest.approx(0.0, abs=1e-6) and metrics["kl_last"] > 0
    # The output adapter: same type, rank and targets as the SFT one, only the policy's adapter saved
    saved, started = (json.loads((d / "adapter" / "adapter_config.json").read_text()) for d in (out, sft))
    for key in ("peft_type", "r", "target_modules", "lora_alpha"):
        assert saved[key] == started[key], key
    assert not (out / "adapter" / "reference").exists()
    # ... and loads in plain peft, giving the policy's (now polite) outputs
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter").eval()
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(out / "adapter")
    tokenizer.padding_side = "left"
    encoded = tokenizer([f"Tell me about the {t}." for t in THINGS], return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answers = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    before = toxicity_scores([RUDE if i % 2 else POLITE for i in range(len(THINGS))]).mean()
    assert toxicity_scores(answers).mean() < before, answers


def test_dpo_continues_the_lora_run_from_the_cli(rude_sft, tmp_path):
    _, sft, _ = rude_sft
    pairs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": f"Tell me about the {t}.", "chosen": POLITE,
                                                    "rejected": RUDE} for t in THINGS * 2])
    out = tmp_path / "dpo"
    assert run_cli("align", "--method", "dpo", "--model", sft, "--data", pairs, "--max-steps", "6", "--batch-size", "8",
                   "--lr", "5e-3", "--save-every", "3", "--out", out) == 0
    log = _log(out)
    assert log[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert log[-1]["reward_margin"] > 0.1
    assert sorted(p.name for p in (out / "adapter").iterdir()) == sorted(p.name for p in (sft / "adapter").iterdir())


def test_dpo_from_an_adapter_run_resumes_exactly(rude_sft, tmp_path):
    import shutil

    from safetensors.torch import load_file

    _, sft, _ = rude_sft
    pairs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": f"About the {t}.", "chosen": POLITE, "rejected": RUDE} for t in THINGS])
    settings = dict(model=str(sft), data=str(pairs), max_steps=4, batch_size=4, lr=5e-3, save_every=2)
    dpo(DPOConfig(out=str(tmp_path / "whole"), **settings))
    (tmp_path / "cut" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole/checkpoints/step-2", tmp_path / "cut/checkpoints/step-2")
    shutil.copy(tmp_path / "whole/config.yaml", tmp_path / "cut/config.yaml")
    dpo(DPOConfig(out=str(tmp_path / "cut"), **settings), resume=True)
    whole, cut = (load_file(tmp_path / name / "adapter" / "adapter_model.safetensors") for name in ("whole", "cut"))
    assert whole.keys() == cut.keys()
    for key in whole:
        torch.testing.assert_close(whole[key], cut[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_prompt_and_prefix_tuning_runs_continue_too(method, rude_sft, tmp_path):
    """peft will not load a prompt-learning adapter as trainable; llmcycle loads it frozen and trains its embedding."""
    from safetensors.torch import load_file

    base, _, prompts = rude_sft
    rows = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "hi", "completion": POLITE}] * 8)
    finetune(FinetuneConfig(model=str(base), data=str(rows), out=str(tmp_path / "sft"), method=method, max_steps=2,
                            num_virtual_tokens=4))
    assert run_cli("align", "--method", "ppo", "--model", tmp_path / "sft", "--data", prompts, "--reward", "toxicity",
                   "--max-steps", "2", "--batch-size", "4", "--mini-batch-size", "4", "--max-new-tokens", "3", "--lr", "0.1",
                   "--out", tmp_path / "ppo") == 0
    assert _log(tmp_path / "ppo")[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    before, after = (load_file(tmp_path / name / "adapter" / "adapter_model.safetensors") for name in ("sft", "ppo"))
    assert before.keys() == after.keys()  # one adapter saved: the policy's, not its reference
    assert any(not torch.equal(before[key], after[key]) for key in before)  # and it trained


def test_tune_full_from_a_prompt_tuning_run_is_a_one_line_error(rude_sft, tmp_path, capsys):
    base, _, prompts = rude_sft
    rows = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "hi", "completion": POLITE}] * 8)
    finetune(FinetuneConfig(model=str(base), data=str(rows), out=str(tmp_path / "pt"), method="prompt-tuning", max_steps=1,
                            num_virtual_tokens=4))
    status = run_cli("align", "--method", "ppo", "--model", tmp_path / "pt", "--data", prompts, "--reward", "toxicity",
                     "--tune", "full", "--out", tmp_path / "ppo")
    assert status == 2 and not (tmp_path / "ppo").exists()
    assert "--tune full merges the adapter" in capsys.readouterr().err
