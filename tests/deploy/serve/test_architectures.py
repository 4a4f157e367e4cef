"""Decoder-only families the scratch builder does not make, built from their configs: the continuous-batching engine
(rows joining at different steps, with different lengths) gives what plain transformers' `generate` gives one prompt
at a time. Sliding-window attention (Mistral, Gemma 2 and 3, windows shorter than the rows), logit soft-capping
(Gemma 2), q/k norms (Qwen 3), fused projections (Phi-3, GPT-NeoX) and learned positions with an offset (OPT)."""

from __future__ import annotations

import pytest
import torch

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
CONFIGS = {
    "mistral": dict(intermediate_size=128, num_key_value_heads=2, sliding_window=8),
    "gemma2": dict(intermediate_size=128, num_key_value_heads=2, head_dim=16, sliding_window=8),
    "gemma3_text": dict(intermediate_size=128, num_key_value_heads=2, head_dim=16, sliding_window=8),
    "qwen3": dict(intermediate_size=128, num_key_value_heads=2, head_dim=16),
    "phi3": dict(intermediate_size=128, num_key_value_heads=2),
    "gpt_neox": dict(intermediate_size=128),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
}
PROMPTS = ["Amy and Ben want to book a table for", "The printer", "Can we move the meeting to Friday because the train",
           "a", "Where do they meet on Sunday after the football match with Carla and Dev?"]


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_dir)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_the_engine_decodes_each_family_as_generate_does(kind, tokenizer, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmcycle.deploy.serve.engine import Engine
    from llmcycle.deploy.serve.jobs import Finished, Job, TextDelta
    from llmcycle.deploy.serve.models import load_served
    from llmcycle.deploy.serve.protocol import SamplingParams

    config = AutoConfig.for_model(kind, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPE, **CONFIGS[kind])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init's, so greedy text varies instead of repeating one token
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    served = load_served(str(tmp_path), [])
    engine, texts, done = Engine(served, max_num_seqs=4), {}, set()
    plan = [(prompt, 10 + 4 * i) for i, prompt in enumerate(PROMPTS)]
    for step in range(300):
        if step % 2 == 0 and step // 2 < len(plan):  # a new request every other step
            prompt, tokens = plan[step // 2]

            def sink(event, key=prompt):
                if isinstance(event, TextDelta):
                    texts[key] = texts.get(key, "") + event.text
                elif isinstance(event, Finished):
                    done.add(key)

            engine.submit([Job(kind, None, tokenizer(prompt)["input_ids"], SamplingParams(max_tokens=tokens, temperature=0), sink)])
        engine.step()
        if len(done) == len(plan):
            break
    reference = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for prompt, tokens in plan:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = reference.generate(**inputs, max_new_tokens=tokens, do_sample=False)
        expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert texts.get(prompt, "") == expected, (kind, prompt)
    assert len(set(texts.values())) > 1
