"""`llmcycle quantize`: torchao folders that plain transformers loads, adapters kept or merged, the comparison, bad input."""

import json
import sys
import types

import pytest
import torch
from conftest import dialogue_rows, run_cli, write_jsonl

from llmcycle.models import load_model

IDS = torch.tensor([[3, 17, 42, 9, 100, 7]])


def float_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def torchao_in_memory(model, method):
    """The peer: torchao's own quantize_ applied to the float model, with the config llmcycle names for `method`."""
    from torchao.quantization import quantize_

    from llmcycle.quantization import torchao_config

    head = model.get_output_embeddings()
    quantize_(model, torchao_config(method), filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and module is not head)
    return model


@pytest.fixture(scope="module")
def lora_dir(llama_dir, tmp_path_factory):
    """A LoRA adapter on the tiny Llama whose B matrices are not zero, so it changes the logits."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(float_model(llama_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(out)
    return out


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight"])
def test_folder_loads_in_plain_transformers_and_equals_torchao_in_memory(method, llama_dir, tmp_path):
    from torchao.utils import TorchAOBaseTensor

    out = tmp_path / "q"
    assert run_cli("quantize", "-m", llama_dir, "--method", method, "-o", out) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("tokenizer")) == [
        "config.json", "generation_config.json", "model.safetensors", "quantization.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    loaded = float_model(out)  # plain from_pretrained: the quantisation config comes from config.json
    quantized = [m for m in loaded.modules() if isinstance(getattr(m, "weight", None), TorchAOBaseTensor)]
    assert len(quantized) == 14  # 2 layers x (q, k, v, o, gate, up, down); embeddings and the output head stay float
    with torch.no_grad():
        expected = torchao_in_memory(float_model(llama_dir), method)(IDS).logits
        reference = float_model(llama_dir)(IDS).logits
        logits = loaded(IDS).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert 0 < (logits - reference).abs().max() < 0.05 * reference.abs().max()  # quantised, and close
    assert (out / "model.safetensors").stat().st_size < 0.6 * (llama_dir / "model.safetensors").stat().st_size


def test_llmcycle_verbs_take_the_folder(t5_dir, tmp_path, capsys):
    out, data = tmp_path / "q", write_jsonl(tmp_path / "d.jsonl", dialogue_rows(4))
    assert run_cli("quantize", "-m", t5_dir, "--method", "int8", "-o", out) == 0
    assert json.loads((out / "quantization.json").read_text())["method"] == "int8-dynamic"
    assert run_cli("generate", "-m", out, "-d", data, "--max-new-tokens", "4", "-o", tmp_path / "p.jsonl") == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 4
    assert run_cli("eval", "-m", out, "-d", data, "--max-new-tokens", "4", "--metrics", "rouge,perplexity", "-o", tmp_path / "m.json") == 0
    assert {"rougeL", "perplexity"} <= set(json.loads((tmp_path / "m.json").read_text()))
    from torchao.utils import TorchAOBaseTensor

    assert isinstance(load_model(str(out), dtype="float32").model.lm_head.weight, torch.Tensor)
    assert any(isinstance(p, TorchAOBaseTensor) for p in load_model(str(out)).model.parameters())


def test_adapter_is_kept_beside_the_quantised_base(llama_dir, lora_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "q"
    assert run_cli("quantize", "-m", llama_dir, "--adapter", lora_dir, "--method", "int8-weight", "-o", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "model", "quantization.json"]  # a run folder's layout
    loaded = load_model(str(out), dtype="float32")  # llmcycle takes the folder as base + adapter
    assert loaded.adapters == ["default"]
    plain = PeftModel.from_pretrained(float_model(out / "model"), out / "adapter").eval()  # and so do transformers + peft
    without = float_model(out / "model")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(IDS).logits, plain(IDS).logits, rtol=0, atol=0)
        assert (plain(IDS).logits - without(IDS).logits).abs().max() > 1e-3  # the adapter is active


def test_serving_pattern_finds_the_base_without_the_adapter(llama_dir, lora_dir, tmp_path):
    """`llmcycle serve` loads locate(spec).base and then attaches locate(spec).adapters itself."""
    from llmcycle.models import locate

    out = tmp_path / "q"
    assert run_cli("quantize", "-m", llama_dir, "--adapter", lora_dir, "--method", "int8-dynamic", "-o", out) == 0
    source = locate(str(out))
    assert source.base == str(out / "model") and [name for name, _ in source.adapters] == ["default"]
    assert load_model(source.base).adapters == []


def test_merge_folds_the_adapter_in_before_quantising(llama_dir, lora_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "q"
    assert run_cli("quantize", "-m", llama_dir, "--adapter", lora_dir, "--merge", "--method", "int8-dynamic", "-o", out) == 0
    assert not (out / "adapter").exists()
    merged = PeftModel.from_pretrained(float_model(llama_dir), lora_dir).merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(float_model(out)(IDS).logits, torchao_in_memory(merged, "int8-dynamic")(IDS).logits, rtol=1e-5, atol=1e-5)


def test_compare_measures_every_form_and_checks_the_planner(llama_dir, tmp_path, capsys):
    data, out = write_jsonl(tmp_path / "d.jsonl", dialogue_rows(6)), tmp_path / "cmp"
    assert run_cli("quantize", "-m", llama_dir, "--compare", data, "--method", "int8-dynamic,int8-weight", "-o", out,
                   "--max-new-tokens", "4", "--bootstrap", "50") == 0
    result = json.loads((out / "comparison.json").read_text())
    assert list(result["forms"]) == ["float32", "bfloat16", "int8-dynamic", "int8-weight"]
    forms = result["forms"]
    assert forms["float32"]["bytes_per_param"] == 4.0 and forms["bfloat16"]["bytes_per_param"] == 2.0
    for name, form in forms.items():
        assert form["size_on_disk_bytes"] == (out / form["folder"] / "model.safetensors").stat().st_size
        assert abs(form["real_over_planned"] - 1) < 0.02, name  # planner or format figure within 2%
        assert form["load_s"] > 0 and form["output_tokens"] > 0 and form["tokens_per_s"] > 0
        assert {"mean", "ci95", "n"} <= set(form["metrics"]["rougeL"])
        assert len((out / form["predictions"]).read_text().splitlines()) == 6
    # int8 keeps embeddings, norms and the head in float32 on a CPU: in this tiny model they outweigh the linear layers
    assert forms["bfloat16"]["size_on_disk_bytes"] < forms["int8-weight"]["size_on_disk_bytes"] < forms["float32"]["size_on_disk_bytes"]
    change = forms["int8-weight"]["metrics"]["rougeL"]["change"]  # paired: every form answers the same rows
    assert {"absolute", "ci95", "p_value"} <= set(change) and change["ci95"][0] <= change["absolute"] <= change["ci95"][1]
    printed = capsys.readouterr().out
    assert "bytes/param" in printed and "quality of each form" in printed


@pytest.mark.parametrize("method", ["nf4", "int8-bnb"])
def test_bitsandbytes_methods_name_cuda_with_or_without_bitsandbytes(method, llama_dir, tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run_cli("quantize", "-m", llama_dir, "--method", method, "-o", tmp_path / "a") == 2
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))  # as if it were installed
    assert run_cli("quantize", "-m", llama_dir, "--method", method, "-o", tmp_path / "b") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error:") and "CUDA" in line for line in errors)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--method", "int4-weight"], "needs a CUDA GPU"),
    (["--method", "int9"], "unknown quantisation method 'int9'"),
    ([], "give one --method"),
    (["--method", "int8-weight,int8-dynamic"], "give one --method"),
    (["--method", "int8-weight", "--merge"], "no adapter to merge"),
    (["--method", "int8-weight", "--max-new-tokens", "3"], "--max-new-tokens applies only with --compare"),
    (["--method", "int8-weight", "--compare", "missing.jsonl", "--adapter", "x"], "--compare measures --model as it is"),
])
def test_bad_flags_are_one_line_errors_and_write_nothing(args, message, llama_dir, tmp_path, capsys):
    if torch.cuda.is_available() and message == "needs a CUDA GPU":
        pytest.skip("this machine has CUDA")
    assert run_cli("quantize", "-m", llama_dir, "-o", tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_model_with_nothing_to_quantise_and_a_taken_folder(gpt2_dir, llama_dir, tmp_path, capsys):
    assert run_cli("quantize", "-m", gpt2_dir, "--method", "int8-weight", "-o", tmp_path / "out") == 2
    assert "no layer was quantised" in capsys.readouterr().err  # GPT-2's layers are Conv1D, not nn.Linear
    assert not list(tmp_path.iterdir())
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    assert run_cli("quantize", "-m", llama_dir, "--method", "int8-weight", "-o", tmp_path / "taken") == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["file"]
    assert run_cli("quantize", "-m", llama_dir, "--method", "int8-weight", "-o", tmp_path / "once") == 0
    assert run_cli("quantize", "-m", tmp_path / "once", "--method", "int8-dynamic", "-o", tmp_path / "twice") == 2
    assert "is already quantised (torchao)" in capsys.readouterr().err and not (tmp_path / "twice").exists()


def test_compare_with_bad_data_writes_nothing(llama_dir, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, "{not json"])
    assert run_cli("quantize", "-m", llama_dir, "--compare", bad, "--method", "int8-weight", "-o", tmp_path / "out") == 2
    assert "bad.jsonl" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_recipe_deploy_takes_the_new_method_names(tmp_path):
    from llmcycle.errors import UserError
    from llmcycle.lifecycle.core import Recipe
    from llmcycle.lifecycle.runner import plan

    def recipe(quantize):
        stages = [{"finetune": {"name": "full", "method": "full"}}, {"deploy": {"from": "full", "quantize": quantize}}]
        return Recipe("r", "m", {}, [], {}, ["rouge"], stages, "r.yaml")

    assert [s.options["quantize"] for s in plan(recipe("int8")) if s.stage == "deploy"] == ["int8"]
    assert plan(recipe("int8-weight"))[1].options["quantize"] == "int8-weight"
    with pytest.raises(UserError, match="quantize must be int8 or one of int8-dynamic"):
        plan(recipe("int3"))


def test_a_run_folder_brings_its_adapter_merged_or_kept(llama_dir, lora_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lora_dir, run / "adapter")  # an llmcycle run folder: adapter/ whose config names the base
    assert run_cli("quantize", "-m", run, "--merge", "--method", "int8-weight", "-o", tmp_path / "merged") == 0
    assert run_cli("quantize", "-m", run, "--method", "int8-weight", "-o", tmp_path / "kept") == 0
    assert not (tmp_path / "merged" / "adapter").exists() and (tmp_path / "kept" / "adapter" / "adapter_config.json").is_file()
    with torch.no_grad():
        merged = load_model(str(tmp_path / "merged"), dtype="float32").model(IDS).logits
        kept = load_model(str(tmp_path / "kept"), dtype="float32").model(IDS).logits
    # the same adapter either way: merged-then-quantised and quantised-plus-adapter differ only by rounding
    assert (merged - kept).abs().max() < 0.05 * kept.abs().max()


def test_a_bitsandbytes_folder_without_cuda_is_a_one_line_error(llama_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    import shutil

    folder = tmp_path / "nf4"
    shutil.copytree(llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (folder / "config.json").write_text(json.dumps(config))  # what `quantize --method nf4` writes on a GPU
    assert run_cli("generate", "-m", folder, "-p", "hello", "--max-new-tokens", "2") == 2
    assert "is quantised with bitsandbytes (4-bit), which needs a CUDA GPU" in capsys.readouterr().err
