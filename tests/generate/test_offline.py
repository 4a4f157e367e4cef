"""Every verb decodes through the serving engine (generate/offline.py): what that changes and what it must not."""

import pytest
import torch

from conftest import lora_adapter, peft_forward_greedy, prefix_adapter
from llmcycle.errors import UserError
from llmcycle.generate.engine import GenerationSettings, generate
from llmcycle.models import load_model

PROMPTS = ["Summarize: Amy and Ben. #Person1#: can we book a table today? Summary:", "hello", "plan a trip",
           "Give a short sentence describing the following product review: great shoes", "Carla"]


@pytest.mark.parametrize("prefill_tokens", [2048, 24], ids=["one-prefill", "prefills-of-24-positions"])
@pytest.mark.parametrize("arch", ["t5", "llama", "gpt2"])  # t5 and gpt2: the engine runs their GELU fused
def test_greedy_equals_transformers_generate_one_prompt_at_a_time(arch, prefill_tokens, request, monkeypatch):
    monkeypatch.setattr("llmcycle.deploy.serve.runner.PREFILL_TOKENS", prefill_tokens)
    loaded = load_model(str(request.getfixturevalue(f"{arch}_dir")))
    settings = GenerationSettings(max_new_tokens=12, batch_size=3)
    expected = []
    for prompt in PROMPTS:
        inputs = loaded.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            ids = loaded.model.generate(**inputs, generation_config=settings.to_transformers(loaded))[0]
        ids = ids if loaded.is_encoder_decoder else ids[inputs.input_ids.shape[1]:]
        expected.append(loaded.tokenizer.decode(ids, skip_special_tokens=True).strip())
    assert generate(loaded, PROMPTS, settings) == expected
    assert len(set(expected)) > 2, "outputs should differ by prompt, or the comparison proves nothing"


def test_sampled_rows_do_not_depend_on_the_batch_size(llama_dir):
    loaded = load_model(str(llama_dir))
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=0, seed=7, batch_size=1)
    alone = generate(loaded, PROMPTS, settings)
    settings.batch_size = 4
    assert generate(loaded, PROMPTS, settings) == alone
    assert generate(loaded, PROMPTS[2:], settings) != alone[2:]  # a row's seed is its index: shifted rows differ
    assert len(set(alone)) == len(PROMPTS)


def test_a_lora_model_is_handed_back_without_the_engines_hooks(llama_dir, tmp_path):
    from peft.tuners.lora import LoraLayer

    adapter = lora_adapter(llama_dir, tmp_path / "lora")
    loaded = load_model(str(adapter))
    ids = loaded.tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        before = loaded.model(**ids).logits
    adapted = generate(loaded, PROMPTS[:2], GenerationSettings(max_new_tokens=6))
    layers = [module for module in loaded.model.modules() if isinstance(module, LoraLayer)]
    assert layers and not any(module._forward_pre_hooks for module in layers)
    with torch.no_grad():
        assert torch.equal(loaded.model(**ids).logits, before)
    assert adapted != generate(load_model(str(llama_dir)), PROMPTS[:2], GenerationSettings(max_new_tokens=6))


def test_prefix_tuning_generates_as_peft_forward_computes(llama_dir, tmp_path):
    """peft's own generate mishandles a prefix under transformers 5; the engine puts it in each row's cache."""
    prefix = prefix_adapter(llama_dir, tmp_path / "prefix", seq2seq=False)
    loaded = load_model(str(llama_dir), adapters=[("prefix", str(prefix))])
    settings = GenerationSettings(max_new_tokens=8, batch_size=2)
    assert generate(loaded, PROMPTS, settings) == [peft_forward_greedy(llama_dir, prefix, p, 8) for p in PROMPTS]
    with pytest.raises(UserError, match="beam search with a prefix-tuning adapter"):
        generate(loaded, PROMPTS[:1], GenerationSettings(max_new_tokens=4, num_beams=2))
