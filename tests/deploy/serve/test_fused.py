"""The engine's fused GELU (deploy/serve/fused.py): the same function in one kernel, and the model's own modules back
when the engine stops."""

import torch
from transformers.activations import GELUTanh, NewGELUActivation

from llmcycle.deploy.serve.fused import fuse_activations
from llmcycle.generate.engine import GenerationSettings, generate
from llmcycle.models import load_model


def test_fused_gelu_computes_the_models_function_and_is_undone(gpt2_dir):
    loaded = load_model(str(gpt2_dir))
    model = loaded.model
    own = [m for m in model.modules() if isinstance(m, NewGELUActivation)]
    assert own, "the scratch GPT-2 should use gelu_new, or this test checks nothing"
    ids = loaded.tokenizer("Summarize: Amy and Ben talk about a trip.", return_tensors="pt")
    with torch.no_grad():
        before = model(**ids).logits
        restore = fuse_activations(model)
        assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
        assert any(isinstance(m, GELUTanh) for m in model.modules())
        fused = model(**ids).logits
        restore()
        after = model(**ids).logits
    assert [m for m in model.modules() if isinstance(m, NewGELUActivation)] == own
    torch.testing.assert_close(fused, before, rtol=1e-4, atol=1e-4)
    assert torch.equal(after, before)


def test_an_offline_run_hands_the_model_back_with_its_own_activations(gpt2_dir):
    loaded = load_model(str(gpt2_dir))
    own = [m for m in loaded.model.modules() if isinstance(m, NewGELUActivation)]
    generate(loaded, ["hello there", "plan a trip"], GenerationSettings(max_new_tokens=4))
    assert [m for m in loaded.model.modules() if isinstance(m, NewGELUActivation)] == own
    assert not any(isinstance(m, GELUTanh) for m in loaded.model.modules())
