"""Reward models end to end on tiny backbones: they learn separable preferences, resume exactly, reject bad input."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, NAMES, TASKS, build, run_cli, write_jsonl
from safetensors.torch import load_file

from llmcycle.align.reward_model import RewardConfig, train_reward
from llmcycle.align.reward_sources import load_reward_model
from llmcycle.data.preferences import load_pairs

POLITE = ["thank you, happy to help", "thanks so much, gladly", "of course, thank you for asking", "sure, thanks and kind regards"]
RUDE = ["no, go away", "stop bothering me, idiot", "figure it out yourself, fool", "ugh, leave me alone"]


def preference_rows(count: int, offset: int = 0) -> list[dict]:
    """Pairs a tiny model separates fast: the chosen response is polite, the rejected one rude."""
    rows = []
    for i in range(offset, offset + count):
        task, name = TASKS[i % len(TASKS)], NAMES[(i * 5) % len(NAMES)]
        rows.append({"prompt": f"{name} asks: can you {task}?", "chosen": f"{POLITE[(i // 2) % 4]}. I will {task}.",
                     "rejected": f"{RUDE[(i // 3) % 4]}. I will not {task}."})
    return rows


def tiny_bert(out: Path, texts: list[str]) -> Path:
    """An encoder backbone as minilm is one (a BertModel), with a tokenizer trained on the test's own text."""
    from transformers import BertConfig, BertModel

    from llmcycle.train.scratch import train_tokenizer

    tokenizer = train_tokenizer(texts, 400, append_eos=False)
    tokenizer.model_max_length = 128
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    texts = CORPUS + [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in preference_rows(24)]
    return {"bert": tiny_bert(root / "bert", texts), "gpt2": build("gpt2", root / "gpt2", dropout=0.0)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    return {"train": write_jsonl(root / "train.jsonl", preference_rows(32)),
            "eval": write_jsonl(root / "eval.jsonl", preference_rows(16, offset=100))}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def run(model, data, out, **fields):
    fields = {"lr": 1e-3, "max_steps": 12, "batch_size": 8, "max_length": 64, **fields}
    return train_reward(RewardConfig(model=str(model), data=str(data), out=str(out), **fields))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["bert", "gpt2"])
def test_learns_separable_preferences_and_scores_them_the_same_way_after_loading(backbone, backbones, data, tmp_path):
    out = tmp_path / "rm"
    metrics = run(backbones[backbone], data["train"], out, eval_data=str(data["eval"]), eval_every=6)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "log.jsonl", "metrics.json", "model"]
    lines = log(out)
    assert [line["step"] for line in lines] == list(range(1, 13))
    assert {"loss", "accuracy", "margin", "lr"} <= set(lines[0]) and "eval_accuracy" in lines[5]
    assert lines[-1]["loss"] < lines[0]["loss"]
    accuracy = metrics["pairwise_accuracy"]
    assert metrics["pairwise_accuracy_on"] == "eval" and accuracy["n"] == 16 and accuracy["mean"] > 0.8
    assert accuracy["ci95"][0] <= accuracy["mean"] <= accuracy["ci95"][1]
    assert metrics["eval_loss"] < math.log(2) and metrics["mean_margin"] > 0
    assert json.loads((out / "metrics.json").read_text()) == metrics

    # The folder loads in plain transformers and in PPO's reward loader, which score alike.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmcycle.align.reward_sources import reward_inputs

    plain = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    rows = json.loads("[" + ",".join(data["eval"].read_text().splitlines()) + "]")
    prompts, chosen = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    with torch.no_grad():
        expected = plain(**reward_inputs(tokenizer, prompts, chosen)).logits[:, 0].numpy()
    reward_model = load_reward_model(str(out))
    assert reward_model(prompts, chosen) == pytest.approx(expected, abs=1e-5)
    assert (reward_model(prompts, chosen) > reward_model(prompts, [r["rejected"] for r in rows])).mean() > 0.8


@pytest.mark.slow
def test_minilm_through_the_cli(data, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(8))
    out = tmp_path / "rm"
    code = run_cli("reward", "--model", "minilm", "--data", train, "--out", out, "--max-steps", "2",
                   "--batch-size", "4", "--max-length", "64")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "log.jsonl", "metrics.json", "model"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"pairwise_accuracy", "pairwise_accuracy_on", "eval_loss", "train_loss", "mean_margin",
                            "trainable_params", "total_params", "wall_time_s", "peak_memory_bytes", "size_on_disk_bytes"}
    assert metrics["pairwise_accuracy_on"] == "train" and metrics["pairwise_accuracy"]["n"] == 8
    assert set(metrics["pairwise_accuracy"]) >= {"mean", "ci95", "n"}
    assert metrics["trainable_params"] == metrics["total_params"] > 20_000_000
    assert (out / "model/model.safetensors").is_file() and (out / "model/tokenizer.json").is_file()
    assert len(log(out)) == 2 and all(math.isfinite(line["loss"]) for line in log(out))


def test_a_ranking_expands_into_every_ordered_pair(backbones, tmp_path):
    source = write_jsonl(tmp_path / "ranked.jsonl", [{"prompt": "Say something.", "responses": ["a", "b", "c"], "ranking": [2, 1, 3]}])
    pairs = load_pairs(str(source))
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("a", "c"), ("b", "a"), ("b", "c")]
    metrics = run(backbones["gpt2"], source, tmp_path / "rm", max_steps=1)
    assert metrics["pairs"] == 3 and metrics["pairwise_accuracy"]["n"] == 3


def test_resume_gives_the_weights_of_an_uninterrupted_run(backbones, tmp_path):
    """With dropout on (BERT's 0.1), across an epoch boundary: the checkpoint restores the random state too."""
    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(8))
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(backbones["bert"], train, whole, max_steps=6, save_every=3, batch_size=4)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints/step-3", resumed / "checkpoints/step-3")
    shutil.copy(whole / "config.yaml", resumed / "config.yaml")
    train_reward(RewardConfig(model=str(backbones["bert"]), data=str(train), out=str(resumed), lr=1e-3,
                              max_steps=6, batch_size=4, max_length=64, save_every=3), resume=True)
    expected, got = weights(whole / "model"), weights(resumed / "model")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)
    assert [line["loss"] for line in log(resumed)] == pytest.approx([line["loss"] for line in log(whole)][3:], abs=1e-6)


def test_an_encoder_decoder_backbone_trains_when_its_tokenizer_marks_pairs(tmp_path):
    """T5's head pools the last EOS token: our scratch tokenizer must end each side of a pair with one, as T5's does."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    folder = build("t5", tmp_path / "t5", dropout=0.0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos)])
    tokenizer.save_pretrained(folder)
    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(4))
    metrics = run(folder, train, tmp_path / "rm", max_steps=2, batch_size=2)
    assert math.isfinite(metrics["train_loss"]) and (tmp_path / "rm/model/config.json").is_file()


def test_a_non_finite_loss_stops_naming_the_step(backbones, data, tmp_path, monkeypatch):
    import llmcycle.align.reward_model as reward

    monkeypatch.setattr(reward, "bradley_terry_loss", lambda chosen, rejected: (chosen - rejected) * float("nan"))
    with pytest.raises(reward.UserError, match="at step 1"):
        run(backbones["gpt2"], data["train"], tmp_path / "rm")


BAD = [
    ([{"prompt": "p", "chosen": "same", "rejected": "same"}], [], "line 1: fields 'chosen' and 'rejected' are equal"),
    ([{"prompt": "p", "chosen": "a"}], [], "line 1: field 'rejected' is missing"),
    ([{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 2]}], [], "'ranking' has 2 ranks for 3 responses"),
    ([{"prompt": "p " * 40, "chosen": "x " * 30 + "yes", "rejected": "x " * 30 + "no"}], ["--max-length", "8"], "no pair differs"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}], ["--batch-size", "0"], "--batch-size must be at least 1"),
]


@pytest.mark.parametrize("rows,flags,message", BAD)
def test_bad_input_is_one_line_exit_2_and_no_folder(rows, flags, message, backbones, tmp_path, capsys):
    source = write_jsonl(tmp_path / "prefs.jsonl", rows)
    model = backbones["gpt2"]
    if "{t5}" in flags:  # our scratch T5 tokenizer does not end pair sides with EOS, which T5's head needs
        model, flags = build("t5", tmp_path / "t5"), []
    out = tmp_path / "rm"
    assert run_cli("reward", "--model", model, "--data", source, "--out", out, *flags) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and message in error[-1]
    assert not out.exists()
