import pytest
import torch

from llmcycle.errors import UserError
from llmcycle.generate.engine import GenerationSettings, generate
from llmcycle.models import load_model

PROMPTS = [
    "Summarize: Amy and Ben. #Person1#: can we book a table today? Summary:",
    "hello",
    "Summarize: Dev and Elena. #Person1#: can we fix the printer today? #Person2#: can we fix the printer today? Summary:",
    "plan a trip",
    "Give a short sentence describing the following product review: great shoes",
    "Carla",
    "buy a present with Farid",
]


@pytest.mark.parametrize("arch", ["t5", "gpt2", "llama"])
def test_batched_greedy_equals_one_by_one(arch, request):
    loaded = load_model(str(request.getfixturevalue(f"{arch}_dir")))
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    batched = generate(loaded, PROMPTS, settings)
    alone = [generate(loaded, [prompt], settings)[0] for prompt in PROMPTS]
    assert batched == alone
    assert len(set(batched)) > 2, "outputs should differ by prompt, or the comparison proves nothing"


def test_seeded_sampling_is_reproducible(model_dir):
    loaded = load_model(str(model_dir))
    settings = GenerationSettings(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=0, seed=3, batch_size=3)
    first = generate(loaded, PROMPTS, settings)
    assert generate(loaded, PROMPTS, settings) == first
    settings.seed = 4
    assert generate(loaded, PROMPTS, settings) != first


def test_beam_search_and_repetition_penalty_run(gpt2_dir):
    loaded = load_model(str(gpt2_dir))
    settings = GenerationSettings(max_new_tokens=6, num_beams=3, repetition_penalty=1.3, batch_size=2)
    assert len(generate(loaded, PROMPTS[:3], settings)) == 3


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_no_repeat_ngram_size_keeps_every_ngram_of_a_completion_unique(arch, request):
    """A tiny random model loops; with no_repeat_ngram_size 2 no token pair comes twice in what it generates.
    Checked on the generated ids (a random byte-level model's text does not tokenise back to the same ids)."""
    loaded = load_model(str(request.getfixturevalue(f"{arch}_dir")))
    inputs = loaded.tokenizer(PROMPTS[0], return_tensors="pt")

    def pairs_repeat(settings: GenerationSettings) -> bool:
        ids = loaded.model.generate(**inputs, generation_config=settings.to_transformers(loaded))[0]
        ids = ids[0 if loaded.is_encoder_decoder else inputs.input_ids.shape[1]:].tolist()
        pairs = list(zip(ids, ids[1:]))
        return len(pairs) != len(set(pairs))

    plain, blocked = GenerationSettings(max_new_tokens=24), GenerationSettings(max_new_tokens=24, no_repeat_ngram_size=2)
    assert pairs_repeat(plain), "no loop to stop: the test would prove nothing"
    assert not pairs_repeat(blocked)
    assert generate(loaded, PROMPTS, plain) != generate(loaded, PROMPTS, blocked)  # the setting reaches llmcycle's engine


@pytest.mark.parametrize("field,value", [
    ("no_repeat_ngram_size", -1), ("max_new_tokens", 0), ("temperature", 0.0), ("top_p", 1.5), ("top_k", -1), ("num_beams", 0), ("batch_size", 0),
])
def test_bad_settings(field, value):
    with pytest.raises(UserError, match=field.replace("_", "-")):
        GenerationSettings(**{field: value}).validate()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_decoder_only_prompt_tuning_adapter_generates_as_peft_forward_does(arch, request, tmp_path):
    """peft's generate under transformers 5 re-inserts the virtual tokens at every step; llmcycle puts them before
    the prompt itself. Greedy tokens equal those of peft's forward pass (virtual tokens before the whole sequence)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from conftest import dialogue_rows, write_jsonl
    from llmcycle.models import load_model
    from llmcycle.train.finetune import FinetuneConfig, finetune

    base = request.getfixturevalue(f"{arch}_dir")
    finetune(FinetuneConfig(model=str(base), data=str(write_jsonl(tmp_path / "d.jsonl", dialogue_rows(8))), out=str(tmp_path / "pt"),
                            method="prompt-tuning", num_virtual_tokens=5, max_steps=2, lr=0.5))
    prompts = ["Summarize: Amy and Ben. #Person1#: can we book a table today? Summary:", "Summarize: Dev. Summary:"]
    ours = generate(load_model(str(tmp_path / "pt")), prompts, GenerationSettings(max_new_tokens=6, batch_size=2))
    loaded = load_model(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "pt" / "adapter").eval()
    for prompt, text in zip(prompts, ours):
        ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
        start = ids.shape[1]
        with torch.no_grad():
            for _ in range(6):
                token = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
                if token.item() == loaded.tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, token.view(1, 1)], dim=1)
        assert text == loaded.tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()
