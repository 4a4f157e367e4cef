import pytest

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


@pytest.mark.parametrize("field,value", [
    ("max_new_tokens", 0), ("temperature", 0.0), ("top_p", 1.5), ("top_k", -1), ("num_beams", 0), ("batch_size", 0),
])
def test_bad_settings(field, value):
    with pytest.raises(UserError, match=field.replace("_", "-")):
        GenerationSettings(**{field: value}).validate()
