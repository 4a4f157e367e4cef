import json
import shutil

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel

from llmcycle.errors import UserError
from llmcycle.models import DECODER_ONLY, ENCODER_DECODER, load_model, locate, resolve_dtype


def test_kind_comes_from_the_config(t5_dir, gpt2_dir, llama_dir):
    assert load_model(str(t5_dir)).kind == ENCODER_DECODER
    assert load_model(str(gpt2_dir)).kind == DECODER_ONLY
    assert load_model(str(llama_dir)).kind == DECODER_ONLY


def test_renamed_folder_keeps_its_kind(t5_dir, tmp_path):
    # The kind is read from config.json, not from a name that happens to say "gpt".
    target = shutil.copytree(t5_dir, tmp_path / "gpt-like-name")
    assert load_model(str(target)).kind == ENCODER_DECODER


def test_encoder_only_model_is_a_clear_error(tmp_path):
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="encoder-only"):
        load_model(str(tmp_path))


def test_missing_model_folder_and_offline_hub_id(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="not a local folder"):
        load_model("someone/model-that-is-not-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model in"):
        load_model(str(tmp_path / "empty"))


def test_decoder_only_gets_pad_token_and_left_padding_without_changing_logits(gpt2_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(gpt2_dir / name, tmp_path / name)
    loaded = load_model(str(tmp_path))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert loaded.tokenizer.padding_side == "left"
    plain = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    ids = loaded.tokenizer("can we plan a trip", return_tensors="pt").input_ids
    assert len(loaded.tokenizer) == plain.config.vocab_size
    torch.testing.assert_close(loaded.model(ids).logits, plain(ids).logits)


def test_run_folder_with_model_or_adapter(gpt2_dir, tmp_path):
    run = tmp_path / "full-run"
    shutil.copytree(gpt2_dir, run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(gpt2_dir)}))
    assert locate(str(run)).base == str(run / "model")

    base = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False))
    adapter_run = tmp_path / "lora-run"
    peft_model.save_pretrained(adapter_run / "adapter")
    (adapter_run / "config.yaml").write_text(yaml.safe_dump({"model": str(gpt2_dir)}))
    config = json.loads((adapter_run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(gpt2_dir)

    loaded = load_model(str(adapter_run))  # the adapter brings its base along
    assert isinstance(loaded.model, PeftModel) and loaded.adapters == ["default"]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gpt2_dir), adapter_run / "adapter").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, reference(input_ids=ids).logits)
    with torch.no_grad():
        plain_base = AutoModelForCausalLM.from_pretrained(gpt2_dir)  # get_peft_model changed `base` in place
        assert not torch.allclose(loaded.model(input_ids=ids).logits, plain_base(input_ids=ids).logits)


def test_dtype_auto_is_float32_on_cpu_and_explicit_dtypes_apply(gpt2_dir):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert load_model(str(gpt2_dir), dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
