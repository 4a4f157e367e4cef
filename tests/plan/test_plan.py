"""The planner: published memory and compute figures, trained-parameter counts against peft's, bad input."""

import json
import math

import click
import pytest
import torch
import transformers as tf
from click.testing import CliRunner

from llmcycle.errors import UserError
from llmcycle.plan.memory import (
    ModelShape, TrainingSetup, find_gpu, layer_activation_bytes, nf4_bytes_per_param, parse_count, plan_memory,
    shape_from_model, shape_from_size, verdict,
)
from llmcycle.plan.compute import plan_compute
from llmcycle.cli.plan import plan
from llmcycle.train.methods import lora_config
from llmcycle.train.settings import LoRASettings

TINY_CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "t5": lambda: tf.T5Config(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0),
    "llama": lambda: tf.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2),
}


def sized(params: float) -> ModelShape:
    return ModelShape(total_params=int(params), layers=32, hidden=4096, heads=32, vocab=32000)


def model_states(params: float, **setup) -> float:
    return plan_memory(sized(params), TrainingSetup(**setup)).model_states_gb


# ---------------------------------------------------------------- model states


@pytest.mark.parametrize("strategy, expected", [("ddp", 120), ("zero1", 31.4), ("zero2", 16.6), ("zero3", 1.875), ("fsdp", 1.875)])
def test_zero_paper_figure_1(strategy, expected):
    """7.5B parameters, mixed-precision Adam, 64 GPUs (ZeRO paper, Figure 1)."""
    assert model_states(7.5e9, gpus=64, strategy=strategy) == pytest.approx(expected, rel=3e-3)


@pytest.mark.parametrize("precision, optimizer, bytes_per_param", [
    ("mixed", "adamw", 16), ("fp32", "adamw", 16), ("bf16", "adamw", 8), ("fp16", "adamw", 8),
    ("mixed", "adamw8bit", 10), ("fp32", "adamw8bit", 10), ("mixed", "sgd", 8), ("fp32", "sgd", 8),
])
def test_bytes_per_parameter(precision, optimizer, bytes_per_param):
    assert model_states(1e9, precision=precision, optimizer=optimizer) == pytest.approx(bytes_per_param)


def test_mixed_precision_adam_splits_2_2_12_and_1b_params_need_16_gb():
    result = plan_memory(sized(1e9), TrainingSetup())
    assert (result.weights_gb, result.gradients_gb, result.optimizer_gb) == pytest.approx((2, 2, 12))
    assert result.model_states_gb == pytest.approx(16)
    assert result.trainable_params == result.total_params == 10**9


def test_parameter_efficient_methods_keep_states_only_for_trained_parameters():
    shape = shape_from_size(7e9, layers=32, hidden=4096)
    lora = plan_memory(shape, TrainingSetup(method="lora"))
    assert lora.trainable_params == 32 * 4 * 8 * (4096 + 4096)  # q, k, v and o (every attention projection), rank 8
    assert lora.gradients_gb == pytest.approx(lora.trainable_params * 2 / 1e9)
    assert lora.optimizer_gb == pytest.approx(lora.trainable_params * 12 / 1e9)
    assert lora.weights_gb == pytest.approx((7e9 + lora.trainable_params) * 2 / 1e9)
    qlora = plan_memory(shape, TrainingSetup(method="qlora"))
    quantised = 12 * 32 * 4096**2
    expected = quantised * nf4_bytes_per_param(True) + (7e9 - quantised) * 2 + qlora.trainable_params * 2
    assert qlora.weights_gb == pytest.approx(expected / 1e9)
    assert qlora.weights_gb < lora.weights_gb / 3


def test_nf4_constants():
    assert nf4_bytes_per_param(double_quant=False) * 8 == pytest.approx(4.5)
    assert nf4_bytes_per_param(double_quant=True) * 8 == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))  # 4.127 bits


# ---------------------------------------------------------------- trained parameters against peft


def tiny_model_dir(arch, tmp_path):
    config = TINY_CONFIGS[arch]()
    config.save_pretrained(tmp_path)
    return tmp_path, config


def peft_trainable(config, peft_config) -> int:
    import peft

    torch.manual_seed(0)
    auto = tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder else tf.AutoModelForCausalLM
    model = peft.get_peft_model(auto.from_config(config), peft_config)
    return model.get_nb_trainable_parameters()[0]


def task_type(config) -> str:
    return "SEQ_2_SEQ_LM" if config.is_encoder_decoder else "CAUSAL_LM"


@pytest.mark.parametrize("arch", ["gpt2", "t5", "llama"])
@pytest.mark.parametrize("targets, rank", [("attention", 8), ("all-linear", 4)])
def test_lora_count_equals_peft(arch, targets, rank, tmp_path):
    import peft

    folder, config = tiny_model_dir(arch, tmp_path)
    shape = shape_from_model(str(folder))
    ours = plan_memory(shape, TrainingSetup(method="lora", lora_rank=rank, lora_targets=targets)).trainable_params
    auto = tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder else tf.AutoModelForCausalLM
    # What `llmcycle finetune --lora-targets TARGETS` trains: one meaning of the targets in both places.
    peft_config = lora_config(auto.from_config(config), config.is_encoder_decoder, LoRASettings(rank, 16.0, targets))
    assert ours == peft_trainable(config, peft_config)


@pytest.mark.parametrize("arch", ["gpt2", "t5", "llama"])
@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_prompt_and_prefix_counts_equal_peft(arch, method, tmp_path):
    import peft

    folder, config = tiny_model_dir(arch, tmp_path)
    ours = plan_memory(shape_from_model(str(folder)), TrainingSetup(method=method, num_virtual_tokens=7)).trainable_params
    config_class = peft.PromptTuningConfig if method == "prompt-tuning" else peft.PrefixTuningConfig
    assert ours == peft_trainable(config, config_class(num_virtual_tokens=7, task_type=task_type(config)))


def test_model_shape_counts_parameters_exactly_and_reads_run_folders(tmp_path):
    folder, config = tiny_model_dir("gpt2", tmp_path / "run" / "model")
    shape = shape_from_model(str(tmp_path / "run"))
    assert shape.total_params == tf.GPT2LMHeadModel(config).num_parameters()
    assert (shape.layers, shape.hidden, shape.heads, shape.vocab) == (2, 32, 4, 300)
    t5_shape = shape_from_model(str(tiny_model_dir("t5", tmp_path / "t5")[0]))
    assert t5_shape.layers == 4 and t5_shape.encoder_decoder  # encoder and decoder blocks


def test_activations_written_in_python_keep_more(tmp_path):
    """GPT-2's gelu_new keeps 4 MLP-wide (4h) tensors for backward where a fused GeLU keeps 1."""
    assert shape_from_model(str(tiny_model_dir("gpt2", tmp_path / "gpt2")[0])).activation_extra == 12
    assert shape_from_model(str(tiny_model_dir("llama", tmp_path / "llama")[0])).activation_extra == 0


# ---------------------------------------------------------------- architectures and activations


def test_shapes_from_a_parameter_count():
    shape = shape_from_size(7.5e9)
    assert shape.hidden == 128 * shape.layers and shape.total_params == 7_500_000_000
    assert 12 * shape.layers * shape.hidden**2 == pytest.approx(7.5e9, rel=0.15)
    assert shape_from_size(12 * 32 * 4096**2 + 32000 * 4096, layers=32).hidden == 4096  # Llama-7B-like
    assert shape_from_size(1.3e9, hidden=2048, vocab=50257).layers == 24  # GPT-3 XL
    assert shape_from_size(None, layers=2, hidden=64, vocab=100).total_params == 12 * 2 * 64**2 + 100 * 64


def test_activations_follow_korthikanti():
    s, b, h, a = 512, 4, 1024, 16
    per_layer = s * b * h * (34 + 5 * a * s / h)
    assert layer_activation_bytes(s, b, h, a, 2, flash=False) == per_layer
    assert layer_activation_bytes(s, b, h, a, 2, flash=True) == s * b * h * 34
    shape = ModelShape(total_params=10**9, layers=24, hidden=h, heads=a, vocab=32000)
    logits = b * s * 32000 * 12  # fp32 log-softmax, its gradient and the logits' gradient as backward starts
    full = plan_memory(shape, TrainingSetup(batch_size=b, max_length=s)).activations_gb * 1e9
    assert full == pytest.approx(24 * per_layer + logits)
    setup = TrainingSetup(batch_size=b, max_length=s, gradient_checkpointing=True)
    assert plan_memory(shape, setup).activations_gb * 1e9 == pytest.approx(24 * 2 * s * b * h + max(per_layer, logits))
    lora = plan_memory(shape, TrainingSetup(method="lora", batch_size=b, max_length=s)).activations_gb * 1e9
    assert lora == pytest.approx(24 * (per_layer - 12 * s * b * h) + logits)  # frozen linears keep no inputs
    all_linear = TrainingSetup(method="lora", lora_targets="all-linear", batch_size=b, max_length=s)
    assert plan_memory(shape, all_linear).activations_gb == pytest.approx(full / 1e9)


# ---------------------------------------------------------------- compute


def test_chinchilla_and_gpt3_compute():
    chinchilla = plan_compute(params=70e9)
    assert chinchilla.tokens == pytest.approx(1.4e12)
    gpt3 = plan_compute(params=175e9, tokens=300e9)
    assert gpt3.flops == pytest.approx(3.15e23)
    assert gpt3.petaflop_s_days == pytest.approx(3640, rel=2e-3)  # 3645.8; the GPT-3 paper lists 3.64e3
    budget = plan_compute(flops=gpt3.flops)
    assert budget.tokens == pytest.approx(20 * budget.params)
    assert 6 * budget.params * budget.tokens == pytest.approx(3.15e23)


def test_gpu_hours():
    result = plan_compute(params=1e9, tokens=20e9, gpu=find_gpu("A100"), utilisation=0.5)
    assert result.gpu_hours == pytest.approx(6 * 1e9 * 20e9 / (312e12 * 0.5) / 3600)
    assert result.gpu_hours == pytest.approx(213.7, rel=1e-3)


def test_parse_count_suffixes():
    assert [parse_count(t, "--params") for t in ("7.5e9", "7.5B", "350M", "1.3b", "70k", "1.4T", "1000")] == \
        pytest.approx([7.5e9, 7.5e9, 350e6, 1.3e9, 70e3, 1.4e12, 1000])


def test_verdicts():
    result = plan_memory(sized(1e9), TrainingSetup(batch_size=1, max_length=128))
    assert verdict(result, find_gpu("h100")).startswith("fits on an H100 (80 GB) with ")
    assert verdict(result, find_gpu("t4")).startswith("does not fit on a T4 (16 GB): needs ")
    assert verdict(result, find_gpu(None, 40)).startswith("fits in 40 GB with ")


# ---------------------------------------------------------------- command line and bad input


def invoke(*args):
    result = CliRunner().invoke(plan, [str(a) for a in args], standalone_mode=False, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_memory_json_and_table():
    record = json.loads(invoke("memory", "--params", "7.5B", "--gpus", 64, "--strategy", "zero2", "--gpu", "a100", "--json"))
    assert record["model_states_gb"] == pytest.approx(16.64, abs=0.01)
    assert record["fits"] is True and record["gpus"] == 64 and record["strategy"] == "zero2"
    for key in ("weights_gb", "gradients_gb", "optimizer_gb", "activations_gb", "total_gb", "trainable_params", "total_params"):
        assert key in record
    table = invoke("memory", "--params", "1B", "--gpu", "H100")
    assert "optimizer states" in table and "fits on an H100 (80 GB)" in table


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_the_planned_command_trains_what_the_plan_counted(arch, tmp_path):
    from conftest import build, dialogue_rows, run_cli, write_jsonl

    model = build(arch, tmp_path / "model")
    record = json.loads(invoke("memory", "--model", model, "--method", "lora", "--gpus", 2, "--strategy", "zero3", "--json"))
    assert "--num-processes 2 --strategy fsdp" in record["command"]
    command = record["command"].replace("DATA", str(write_jsonl(tmp_path / "rows.jsonl", dialogue_rows(8))))
    command = command.replace("OUT", str(tmp_path / "run")).replace("--num-processes 2 --strategy fsdp", "--max-steps 1")
    assert command.startswith("llmcycle finetune ")
    assert run_cli(*command.split()[1:]) == 0
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert (metrics["trainable_params"], metrics["total_params"]) == (record["trainable_params"], record["total_params"])


def test_cli_compute_json():
    record = json.loads(invoke("compute", "--params", "175B", "--tokens", "300B", "--gpu", "h100", "--json"))
    assert record["flops"] == pytest.approx(3.15e23) and record["petaflop_s_days"] == pytest.approx(3645.8, rel=1e-4)
    assert "gpu_hours" in record
    assert json.loads(invoke("compute", "--flops", "5.88e23", "--json"))["chinchilla_params"] == pytest.approx(70e9, rel=1e-3)


@pytest.mark.parametrize("args", [
    ["memory", "--params", "0"], ["memory", "--params", "-7B"], ["memory", "--params", "seven"],
    ["memory", "--params", "1B", "--gpus", "0"], ["memory", "--params", "1B", "--batch-size", "-1"],
    ["memory", "--params", "1B", "--layers", "0"], ["memory", "--params", "1B", "--gpu", "tpu-v9"],
    ["memory", "--params", "1B", "--gpu-memory", "-80"], ["memory"], ["memory", "--model", "/no/such/model"],
    ["compute", "--params", "1B", "--flops", "1e20"], ["compute", "--tokens", "1T"], ["compute", "--flops", "0"],
    ["compute", "--params", "1B", "--gpu", "h100", "--utilisation", "1.5"],
])
def test_bad_input_is_a_user_error(args):
    with pytest.raises(UserError) as raised:
        CliRunner().invoke(plan, args, standalone_mode=False, catch_exceptions=False)
    assert "\n" not in str(raised.value)


def test_unknown_strategy_is_refused():
    with pytest.raises(click.UsageError):
        CliRunner().invoke(plan, ["memory", "--params", "1B", "--strategy", "zero4"], standalone_mode=False, catch_exceptions=False)
    with pytest.raises(UserError, match="unknown --strategy 'zero4'"):
        plan_memory(sized(1e9), TrainingSetup(strategy="zero4"))


def test_model_and_sizes_are_exclusive(tmp_path):
    folder, _ = tiny_model_dir("gpt2", tmp_path)
    with pytest.raises(UserError, match="leave out"):
        CliRunner().invoke(plan, ["memory", "--model", str(folder), "--layers", "2"], standalone_mode=False, catch_exceptions=False)


def test_numbers_are_finite_for_every_method_and_strategy():
    shape = shape_from_size(350e6)
    for method in ("full", "lora", "qlora", "prompt-tuning", "prefix-tuning"):
        for strategy in ("ddp", "zero1", "zero2", "zero3", "fsdp"):
            result = plan_memory(shape, TrainingSetup(method=method, strategy=strategy, gpus=4))
            assert math.isfinite(result.total_gb) and result.total_gb > 0


@pytest.mark.parametrize("args, message", [
    (["memory", "--params", "0"], "error: --params must be positive, not 0"),
    (["memory", "--params", "1B", "--strategy", "zero4"], "error: Invalid value for '--strategy'"),
    (["compute", "--flops", "-1e20"], "error: --flops must be positive, not -1e20"),
])
def test_llmcycle_plan_errors_are_one_line_and_exit_2(args, message, monkeypatch, capsys):
    from conftest import run_cli

    import llmcycle.cli

    monkeypatch.setitem(llmcycle.cli.cli.commands, "plan", plan)  # as `cli.add_command(plan)` registers it
    assert run_cli("plan", *args) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message) and "Traceback" not in captured.err
    assert captured.out == ""
