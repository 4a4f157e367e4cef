"""PPO on tiny models of both kinds: a reward that prefers one word, the KL penalty, and the run contract.

The policies are first fine-tuned to answer "yes" or "no" about equally often, so the reward (the share of
words that are "yes") starts near 0.5 and has somewhere to go.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import build, run_cli, write_jsonl
from safetensors.torch import load_file

from llmcycle.align.ppo import PPOConfig, gae, ppo, response_mask, token_rewards
from llmcycle.align.reward_sources import Reward, parse_reward
from llmcycle.errors import UserError
from llmcycle.evaluate.metrics import toxicity_scores
from llmcycle.train.finetune import FinetuneConfig, finetune

WORDS = ["red", "big", "cold", "far", "new", "old", "hot", "wet"]


@pytest.fixture(scope="module")
def yes_no(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    rows = [{"prompt": f"Question {i}: is it {w}?", "completion": "yes" if i % 2 else "no"} for i, w in enumerate(WORDS * 4)]
    data = write_jsonl(root / "yes-no.jsonl", rows)
    policies = {}
    for arch in ("gpt2", "t5"):
        base = build(arch, root / f"{arch}-base", dropout=0.0)
        finetune(FinetuneConfig(model=str(base), data=str(data), out=str(root / f"{arch}-sft"), method="full", lr=3e-3, max_steps=30, batch_size=8))
        policies[arch] = root / f"{arch}-sft" / "model"
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])
    return policies, prompts


def run_ppo(policy, prompts, out, **fields):
    settings = dict(reward=["word=yes"], max_steps=20, batch_size=16, mini_batch_size=8, ppo_epochs=4, max_new_tokens=4, lr=3e-3, kl_coef=0.05)
    metrics = ppo(PPOConfig(model=str(policy), data=str(prompts), out=str(out), **{**settings, **fields}))
    return metrics, [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_ppo_raises_the_reward_and_reports_the_kl(arch, yes_no, tmp_path):
    policies, prompts = yes_no
    metrics, log = run_ppo(policies[arch], prompts, tmp_path / "run")
    rewards = [record["reward"] for record in log]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.15, rewards
    for name in ("kl", "entropy", "clip_fraction", "value_loss", "policy_loss", "tokens_per_second", "reward"):
        assert all(np.isfinite(record[name]) for record in log), name
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["adapter", "config.yaml", "log.jsonl", "metrics.json", "value_head.safetensors"]
    assert metrics["kl_last"] > 0.2  # it moved away from the reference to get there


@pytest.mark.slow
def test_a_large_kl_coefficient_keeps_the_policy_near_the_reference(yes_no, tmp_path):
    policies, prompts = yes_no
    _, free = run_ppo(policies["gpt2"], prompts, tmp_path / "free", max_steps=10)
    _, held = run_ppo(policies["gpt2"], prompts, tmp_path / "held", max_steps=10, kl_coef=50.0)
    assert np.mean([r["kl"] for r in held[-4:]]) < 0.3 < np.mean([r["kl"] for r in free[-4:]])
    assert abs(np.mean([r["reward"] for r in held[-4:]]) - np.mean([r["reward"] for r in held[:4]])) < 0.3


def test_full_tuning_resume_and_cli(yes_no, tmp_path, capsys):
    policies, prompts = yes_no
    args = ["align", "--method", "ppo", "--model", policies["gpt2"], "--data", prompts, "--reward", "word=yes:2", "--reward", "toxicity:0.1",
            "--tune", "full", "--max-steps", "4", "--batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "2",
            "--max-new-tokens", "4", "--lr", "1e-4", "--save-every", "2"]
    assert run_cli(*args, "--out", tmp_path / "whole") == 0
    assert (tmp_path / "whole/model/config.json").is_file() and "mean reward" in capsys.readouterr().out
    # A run stopped after its step-2 checkpoint and resumed ends where the whole run ended.
    (tmp_path / "cut/checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole/checkpoints/step-2", tmp_path / "cut/checkpoints/step-2")
    shutil.copy(tmp_path / "whole/config.yaml", tmp_path / "cut/config.yaml")
    assert run_cli(*args, "--out", tmp_path / "cut", "--resume") == 0
    whole, cut = load_file(tmp_path / "whole/model/model.safetensors"), load_file(tmp_path / "cut/model/model.safetensors")
    for key in whole:
        torch.testing.assert_close(whole[key], cut[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("flags,message", [
    (["--reward", "nothing-usable"], "--reward 'nothing-usable'"),
    ([], "give at least one --reward"),
    (["--reward", "word=yes", "--mini-batch-size", "64"], "--mini-batch-size cannot exceed --batch-size"),
    (["--reward", "word=yes", "--kl-coef", "-1"], "--kl-coef must be at least 0 (got -1"),
])
def test_bad_input(flags, message, yes_no, tmp_path, capsys):
    policies, prompts = yes_no
    assert run_cli("align", "--method", "ppo", "-m", policies["gpt2"], "-d", prompts, "-o", tmp_path / "x", *flags) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_model_that_cannot_generate_is_refused(yes_no, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "bert")
    assert run_cli("align", "--method", "ppo", "-m", tmp_path / "bert", "-d", yes_no[1], "--reward", "word=yes", "-o", tmp_path / "x") == 2
    assert "encoder-only" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_reward_terms_and_their_sum():
    assert parse_reward("toxicity:0.5").weight == 0.5 and parse_reward("word=yes").argument == "yes"
    reward = Reward(["word=yes:2", "toxicity"])
    responses = ["yes yes no", "you stupid idiot"]
    scores = reward(["q", "q"], responses)
    np.testing.assert_allclose(scores, np.array([2 * 2 / 3, 0.0]) + 1 - toxicity_scores(responses), rtol=1e-6)
    assert scores[0] > scores[1]
    with pytest.raises(UserError):
        parse_reward("rm=")


def test_masks_rewards_and_advantages_by_hand():
    eos = 2
    mask = response_mask(torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8]]), eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    log_probs, ref = torch.tensor([[-1.0, -2.0, 0, 0], [-1.0] * 4]), torch.tensor([[-1.5, -2.0, 0, 0], [-1.0] * 4])
    rewards, kl = token_rewards(torch.tensor([1.0, 3.0]), log_probs, ref, mask.float(), kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 1.0, 0, 0], [0, 0, 0, 3.0]]))
    advantages, returns = gae(rewards, torch.zeros(2, 4), mask.float(), gamma=1.0, lam=1.0)
    assert advantages[0].tolist() == pytest.approx([0.95, 1.0, 0, 0]) and advantages[1].tolist() == pytest.approx([3.0] * 4)
    assert torch.equal(returns, advantages)


def test_response_log_probs_skip_the_prompt_logits_and_equal_the_full_ones(yes_no):
    """score_tokens asks the model for the response positions' logits only; they equal the full forward's."""
    from llmcycle.align.ppo import PPOConfig, sample, score_tokens
    from llmcycle.models import load_model

    loaded = load_model(str(yes_no[0]["gpt2"]))
    torch.manual_seed(0)
    rollout = sample(loaded.model, loaded, ["Question 1: is it red?", "Q: big?"], PPOConfig(max_new_tokens=4))
    with torch.no_grad():
        fast = score_tokens(loaded.model, rollout)[0]
        logits = loaded.model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                              position_ids=rollout.position_ids).logits  # (batch, P + R, vocab)
    width = rollout.response.shape[1]
    expected = torch.log_softmax(logits[:, -width - 1 : -1].float(), -1).gather(-1, rollout.response.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)
