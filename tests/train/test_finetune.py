"""Fine-tuning end to end on tiny models of both kinds: smoke tests per method and the run invariants."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build, dialogue_rows, run_cli, write_jsonl
from safetensors.torch import load_file

from llmcycle.train.finetune import FinetuneConfig, finetune

LR = {"full": 3e-3, "freeze": 3e-3, "lora": 3e-2, "prompt-tuning": 1e-1, "prefix-tuning": 3e-2}


@pytest.fixture(scope="module")
def quiet_models(tmp_path_factory):
    """Tiny models without dropout, so runs that should be equal are equal to float precision."""
    root = tmp_path_factory.mktemp("quiet")
    return {arch: build(arch, root / arch, dropout=0.0) for arch in ("t5", "gpt2", "llama")}


@pytest.fixture
def train_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", dialogue_rows(16))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def run(model, data, out, method="lora", **fields):
    fields = {"lr": LR[method], "max_steps": 12, "batch_size": 4, "lora_dropout": 0.0, **fields}
    return finetune(FinetuneConfig(model=str(model), data=str(data), out=str(out), method=method, **fields))


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["t5", "gpt2"])
@pytest.mark.parametrize("method", ["full", "lora", "prompt-tuning", "prefix-tuning", "freeze"])
def test_each_method_trains_what_it_should(arch, method, quiet_models, train_file, tmp_path):
    out = tmp_path / "run"
    extra = {"trainable": "last:1"} if method == "freeze" else {}
    metrics = run(quiet_models[arch], train_file, out, method, save_every=1, **extra)
    history = losses(out)
    assert all(map(torch.isfinite, torch.tensor(history))) and history[-1] < history[0]
    name = "adapter" if method in ("lora", "prompt-tuning", "prefix-tuning") else "model"
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.yaml", "metrics.json", "log.jsonl", "checkpoints", name])
    assert 0 < metrics["trainable_params"] <= metrics["total_params"]
    assert set(json.loads((out / "metrics.json").read_text())) >= {
        "train_loss", "eval_loss", "trainable_params", "total_params", "trainable_share", "tokens_per_second",
        "peak_memory_bytes", "wall_time_s", "size_on_disk_bytes"}
    if name == "adapter":
        # Every trained tensor moved between the first checkpoint and the end.
        first, last = weights(out / "checkpoints/step-1/adapter"), weights(out / "adapter")
        assert first.keys() == last.keys() and all(not torch.equal(first[k], last[k]) for k in first)
        assert (out / "adapter/tokenizer.json").is_file()
        return
    before, after = weights(quiet_models[arch]), weights(out / "model")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if method == "full":
        assert changed == set(before)
    else:
        last_blocks = {"t5": ("encoder.block.1.", "decoder.block.1."), "gpt2": ("transformer.h.1.",)}[arch]
        assert changed == {k for k in before if k.startswith(last_blocks)}


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_accumulation_equals_a_larger_batch(arch, quiet_models, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", dialogue_rows(16))  # rows of different lengths
    run(quiet_models[arch], data, tmp_path / "b8", "full", batch_size=8, grad_accum=1, max_steps=3)
    run(quiet_models[arch], data, tmp_path / "b1", "full", batch_size=1, grad_accum=8, max_steps=3)
    assert losses(tmp_path / "b8") == pytest.approx(losses(tmp_path / "b1"), rel=1e-5)
    # The trained models compute the same function. (Their weights need not match to the last bit: Adam's
    # update g / (sqrt(v) + eps) turns float noise into full steps where the true gradient is zero, as it is
    # for attention key biases; the gradients themselves agree to 1e-6, see the next test.)
    from llmcycle.models import load_model

    ids = torch.tensor([[5, 60, 7, 80, 9, 10]])
    outputs = []
    for name in ("b8", "b1"):
        model = load_model(str(tmp_path / name)).model
        with torch.no_grad():
            outputs.append(model(input_ids=ids, labels=ids).logits if arch == "t5" else model(input_ids=ids).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_accumulated_gradient_equals_the_full_batch_gradient(arch, quiet_models):
    from llmcycle.data import Example
    from llmcycle.train.finetune import train_step
    from llmcycle.models import load_model
    from llmcycle.train.sft_data import collate, tokenize

    loaded = load_model(str(quiet_models[arch]))
    examples = [Example(r["prompt"], r["completion"], "", i) for i, r in enumerate(dialogue_rows(8))]
    rows, _, _ = tokenize(examples, loaded.tokenizer, loaded.is_encoder_decoder, 512)
    pad, seq2seq, model = loaded.tokenizer.pad_token_id, loaded.is_encoder_decoder, loaded.model.train()

    def gradient(batches):
        model.zero_grad()
        loss, _, _ = train_step(model, batches, seq2seq, torch.device("cpu"), contextlib.nullcontext)
        return loss, [p.grad.clone() for p in model.parameters()]

    whole_loss, whole = gradient([collate(rows, pad, seq2seq)])
    split_loss, split = gradient([collate([row], pad, seq2seq) for row in rows])
    assert whole_loss == pytest.approx(split_loss, rel=1e-6)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["full", "prompt-tuning"])
def test_the_output_head_on_completion_positions_only_gives_the_full_loss(arch, method, quiet_models):
    """completion_loss_sum skips the logits of prompt positions; the loss and gradients are those of all logits."""
    from llmcycle.data import Example
    from llmcycle.models import load_model
    from llmcycle.train.methods import apply_method
    from llmcycle.train.sft_data import IGNORE, collate, completion_loss_sum, positions_to_score, scored_positions_only, tokenize

    loaded = load_model(str(quiet_models[arch]))
    model = apply_method(loaded.model, FinetuneConfig(method=method, num_virtual_tokens=4), False, arch).train()
    examples = [Example(r["prompt"], r["completion"], "", i) for i, r in enumerate(dialogue_rows(6))]
    batch = collate(tokenize(examples, loaded.tokenizer, False, 512)[0], loaded.tokenizer.pad_token_id, False)
    keep = positions_to_score(batch["labels"])
    assert keep < batch["labels"].shape[1]  # there are prompt positions to skip
    scored = torch.zeros(len(batch["labels"]), keep, dtype=torch.bool)
    scored[:, :-1] = batch["labels"][:, -keep:][:, 1:] != IGNORE
    with torch.no_grad(), scored_positions_only(model, scored) as selection:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    assert selection["applied"] and logits.shape == (int(scored.sum()), model.config.vocab_size)  # the fast path runs

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    fast = completion_loss_sum(model, batch, False)
    fast_grads = gradients(fast)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -batch["labels"].shape[1]:]
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                                                  ignore_index=IGNORE, reduction="sum")
    assert fast.item() == pytest.approx(reference.item(), rel=1e-6)
    for a, b in zip(fast_grads, gradients(reference)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_two_seeded_runs_are_equal_and_config_yaml_reproduces_the_run(quiet_models, train_file, tmp_path):
    run(quiet_models["gpt2"], train_file, tmp_path / "a", "lora", max_steps=4, lora_dropout=0.1)
    run(quiet_models["gpt2"], train_file, tmp_path / "b", "lora", max_steps=4, lora_dropout=0.1)
    assert run_cli("finetune", "--config", tmp_path / "a/config.yaml", "--set", f"out={tmp_path / 'c'}") == 0
    a = weights(tmp_path / "a/adapter")
    for other in ("b", "c"):
        assert all(torch.equal(a[k], v) for k, v in weights(tmp_path / other / "adapter").items())


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(quiet_models, train_file, tmp_path):
    args = ["-m", "llmcycle.cli", "finetune", "-m", str(quiet_models["gpt2"]), "-d", str(train_file), "--method", "lora",
            "--lr", "0.01", "--batch-size", "2", "--max-steps", "300", "--save-every", "5", "--lora-dropout", "0.1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True)
    killed = subprocess.Popen([sys.executable, *args, "--out", str(tmp_path / "killed")], env=env, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed/checkpoints/step-10"
    deadline = time.time() + 120
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed/adapter").exists(), "the run finished before it could be killed"
    assert run_cli("finetune", "--config", tmp_path / "killed/config.yaml", "--resume") == 0
    whole, resumed = weights(tmp_path / "whole/adapter"), weights(tmp_path / "killed/adapter")
    for key in whole:
        torch.testing.assert_close(whole[key], resumed[key], atol=1e-5, rtol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed/log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 301))


def test_merged_lora_equals_unmerged_and_adapters_load_in_plain_peft(quiet_models, train_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmcycle.models import load_model

    run(quiet_models["gpt2"], train_file, tmp_path / "lora", "lora", max_steps=5)
    assert run_cli("merge", "--model", quiet_models["gpt2"], "--adapter", tmp_path / "lora", "--out", tmp_path / "merged") == 0
    ids = torch.tensor([[5, 60, 7, 80, 9]])
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(quiet_models["gpt2"]), tmp_path / "lora/adapter").eval()
    ours = load_model(str(tmp_path / "lora")).model
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
        torch.testing.assert_close(ours(input_ids=ids).logits, expected)
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(quiet_models["gpt2"])(input_ids=ids).logits, expected)


def test_full_run_folder_loads_in_plain_transformers_and_every_verb(quiet_models, train_file, tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM

    run(quiet_models["t5"], train_file, tmp_path / "full", "full", max_steps=3)
    AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "full/model")
    assert run_cli("generate", "-m", tmp_path / "full", "-p", "Summarize: Amy", "--max-new-tokens", "4") == 0
    assert run_cli("eval", "-m", tmp_path / "full", "-d", train_file, "--max-new-tokens", "4", "--bootstrap", "0") == 0


def test_packing_gives_the_loss_of_separate_rows(quiet_models):
    from llmcycle.data import Example
    from llmcycle.models import load_model
    from llmcycle.train.sft_data import collate, collate_packed, completion_loss_sum, pack, tokenize

    loaded = load_model(str(quiet_models["llama"]))
    examples = [Example(r["prompt"], r["completion"], "", i) for i, r in enumerate(dialogue_rows(5))]
    rows, _, _ = tokenize(examples, loaded.tokenizer, False, 512)
    packed = pack(rows, 512)
    assert len(packed) == 1 and len(packed[0].lengths) == 5
    with torch.no_grad():
        separate = completion_loss_sum(loaded.model, collate(rows, loaded.tokenizer.pad_token_id, False), False)
        together = completion_loss_sum(loaded.model, collate_packed(packed, loaded.tokenizer.pad_token_id), False)
    torch.testing.assert_close(separate, together, rtol=1e-5, atol=1e-4)


def test_packing_is_best_fit_decreasing():
    from llmcycle.train.sft_data import Tokenized, pack

    rows = [Tokenized(list(range(n)), [-100] + list(range(1, n))) for n in (6, 5, 4, 3, 2)]
    packed = pack(rows, 10)
    # In file order they would fill three sequences ([6], [5, 4], [3, 2]); best fit needs two.
    assert [p.lengths for p in packed] == [(6, 4), (5, 3, 2)]
    assert all(len(p.input_ids) == len(p.labels) == sum(p.lengths) <= 10 for p in packed)
    assert sorted(len(r.input_ids) for r in rows) == sorted(n for p in packed for n in p.lengths)


@pytest.mark.slow
def test_packed_training_runs(quiet_models, train_file, tmp_path):
    metrics = run(quiet_models["llama"], train_file, tmp_path / "p", "lora", packing=True, max_length=256)
    assert metrics["steps"] == 12 and losses(tmp_path / "p")[-1] < losses(tmp_path / "p")[0]


BAD = [
    (["--method", "lora", "--lora-rank", "0"], "--lora-rank must be at least 1"),
    (["--method", "full", "--lr", "-1"], "--lr must be above 0"),
    (["--method", "sgd-magic"], "sgd-magic"),
    (["--method", "lora", "--lora-targets", "q_proj_x"], "no linear module named 'q_proj_x'"),
    (["--method", "freeze"], "needs --trainable"),
    (["--method", "freeze", "--trainable", "nothing_like_this"], "matches no parameter"),
    (["--method", "qlora"], "needs a CUDA GPU"),
    (["--resume"], "no complete checkpoint"),
    (["--set", "lora_rank=abc"], "field 'lora_rank': expected a whole number"),
    (["--set", "no_such_field=1"], "unknown field 'no_such_field'"),
]


@pytest.mark.parametrize("flags,message", BAD)
def test_bad_input_leaves_no_run_folder(flags, message, quiet_models, train_file, tmp_path, capsys):
    out = tmp_path / "never"
    assert run_cli("finetune", "-m", quiet_models["gpt2"], "-d", train_file, "--out", out, *flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_model_and_unusable_data(train_file, tmp_path, capsys):
    assert run_cli("finetune", "-m", tmp_path / "nope", "-d", train_file, "--out", tmp_path / "x") == 2
    assert "does not exist" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "only a prompt"}])
    assert run_cli("finetune", "-m", tmp_path / "nope", "-d", bad, "--out", tmp_path / "x") == 2
    assert not (tmp_path / "x").exists()


def test_diverging_loss_stops_with_the_step_and_keeps_checkpoints(quiet_models, train_file, tmp_path, capsys):
    out = tmp_path / "nan"
    code = run_cli("finetune", "-m", quiet_models["gpt2"], "-d", train_file, "--out", out, "--method", "full",
                   "--lr", "1e12", "--max-grad-norm", "0", "--max-steps", "30", "--save-every", "1")
    assert code == 2
    message = capsys.readouterr().err
    assert "the loss became" in message and "at step" in message
    assert not (out / "model").exists() and (out / "checkpoints").is_dir()


def test_resume_refuses_changed_settings_and_finished_runs(quiet_models, train_file, tmp_path, capsys):
    out = tmp_path / "r"
    run(quiet_models["gpt2"], train_file, out, "lora", max_steps=4, save_every=2)
    assert run_cli("finetune", "--config", out / "config.yaml", "--resume") == 2
    assert "holds a finished run" in capsys.readouterr().err
    (tmp_path / "r2").mkdir()
    for name in ("checkpoints", "config.yaml"):
        (tmp_path / "r2" / name).symlink_to(out / name)
    assert run_cli("finetune", "--config", out / "config.yaml", "--set", f"out={tmp_path / 'r2'}", "--set", "lr=0.5", "--resume") == 2
    assert "other settings than" in capsys.readouterr().err


def test_prompt_tuning_from_text_and_lora_on_named_targets(quiet_models, train_file, tmp_path):
    import json as json_

    run(quiet_models["t5"], train_file, tmp_path / "pt", "prompt-tuning", max_steps=2, num_virtual_tokens=6,
        prompt_init_text="Summarize the dialogue")
    config = json_.loads((tmp_path / "pt/adapter/adapter_config.json").read_text())
    assert config["prompt_tuning_init"] == "TEXT" and config["num_virtual_tokens"] == 6
    metrics = run(quiet_models["t5"], train_file, tmp_path / "qv", "lora", max_steps=2, lora_targets="q,v", lora_rank=4)
    assert metrics["trainable_params"] == 4 * (64 + 64) * 2 * (2 + 2 + 2)  # q and v in 2 encoder self, 2 decoder self and 2 cross attentions
