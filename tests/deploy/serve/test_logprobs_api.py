"""Log-probabilities, echo and penalties through the official openai client against `llmcycle serve` (a tiny Llama
and a tiny T5 on loopback servers, always stopped)."""

from __future__ import annotations

import pytest
import torch
from serving import PROMPTS

from llmcycle.deploy.serve.config import ServerConfig
from llmcycle.deploy.serve.listening import bind
from llmcycle.deploy.serve.server import RunningServer
from llmcycle.evaluate.metrics import reference_nll
from llmcycle.models import load_model

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(llama_dir, t5_dir):
    running = {}
    try:
        for name, base in (("llama", llama_dir), ("t5", t5_dir)):
            running[name] = RunningServer(ServerConfig(str(base), [], served_model_name=name), bind("127.0.0.1", 0)).start()
            running[name].wait_ready()
        yield running
    finally:
        for server in running.values():
            server.stop()


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)


def test_echoed_logprobs_sum_to_what_eval_computes(servers, llama_dir):
    loaded = load_model(str(llama_dir))
    prompt, reference = PROMPTS[0], " Amy books a table"
    nll, count = reference_nll(loaded, [prompt], [reference], batch_size=1)[0]
    prompt_ids = loaded.tokenizer(prompt)["input_ids"]
    target_ids = loaded.tokenizer(reference, add_special_tokens=False)["input_ids"] + [loaded.tokenizer.eos_token_id]
    reply = client(servers["llama"]).completions.create(model="llama", prompt=prompt_ids + target_ids, echo=True,
                                                        logprobs=1, max_tokens=0, temperature=0)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(prompt_ids) + count and reply.usage.completion_tokens == 0
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert sum(logprobs.token_logprobs[len(prompt_ids):]) == pytest.approx(-nll, abs=1e-4)
    assert all(len(top) in (1, 2) for top in logprobs.top_logprobs[1:])  # the top token, and the chosen one
    as_text = client(servers["llama"]).completions.create(model="llama", prompt=prompt, echo=True, logprobs=1,
                                                          max_tokens=0, temperature=0)
    assert as_text.choices[0].logprobs.token_logprobs[1:] == pytest.approx(logprobs.token_logprobs[1:len(prompt_ids)], abs=1e-5)
    assert as_text.choices[0].text == prompt


def test_completion_logprobs_stream_as_they_answer(servers):
    llama = client(servers["llama"])
    whole = llama.completions.create(model="llama", prompt=PROMPTS[1], max_tokens=8, temperature=0, logprobs=3)
    logprobs = whole.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == whole.usage.completion_tokens
    assert all(1 <= len(top) <= 4 and max(top.values()) >= chosen  # tokens spelled alike share a key
               for top, chosen in zip(logprobs.top_logprobs, logprobs.token_logprobs))
    tokens, values = [], []
    for chunk in llama.completions.create(model="llama", prompt=PROMPTS[1], max_tokens=8, temperature=0, logprobs=3, stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            tokens += chunk.choices[0].logprobs.tokens
            values += chunk.choices[0].logprobs.token_logprobs
    assert tokens == logprobs.tokens and values == pytest.approx(logprobs.token_logprobs, abs=1e-5)
    # byte tokens spell a character split between them as half of one each, as vLLM spells them: up to the first,
    # the offsets index the text
    text = whole.choices[0].text
    whole_characters = next((i for i, token in enumerate(logprobs.tokens) if "\ufffd" in token), len(logprobs.tokens))
    assert all(text[offset:].startswith(token) for offset, token in
               zip(logprobs.text_offset[:whole_characters], logprobs.tokens[:whole_characters]))


def test_a_stripped_completion_spells_its_first_token_as_its_text_does(servers, llama_dir):
    """The text is stripped as `llmcycle generate` strips it; its first token loses the space too, so the offsets
    index the text instead of running one character past it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    spaced = next(i for i in range(len(tokenizer)) if tokenizer.decode([i]).startswith(" ") and len(tokenizer.decode([i]).strip()) > 1)
    reply = client(servers["llama"]).completions.create(model="llama", prompt=PROMPTS[1], max_tokens=3, temperature=0,
                                                        logprobs=0, logit_bias={str(spaced): 100})
    text, logprobs = reply.choices[0].text, reply.choices[0].logprobs
    word = tokenizer.decode([spaced])
    assert text == (word * 3).strip() and logprobs.tokens == [word.lstrip(), word, word]
    assert logprobs.text_offset == [0, len(word) - 1, 2 * len(word) - 1]


def test_chat_logprobs_shape(servers):
    reply = client(servers["llama"]).chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 2 and item.bytes == list(item.token.encode())
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob >= -9999


def test_echo_with_logprobs_on_an_encoder_decoder_model_is_refused(servers):
    with pytest.raises(openai.BadRequestError) as info:
        client(servers["t5"]).completions.create(model="t5", prompt="hello", echo=True, logprobs=1, max_tokens=1)
    assert info.value.body["param"] == "echo" and "decoder-only" in info.value.body["message"]
    echoed = client(servers["t5"]).completions.create(model="t5", prompt="hello", echo=True, max_tokens=3, temperature=0)
    assert echoed.choices[0].text.startswith("hello")


def test_penalties_sent_by_the_client(servers, llama_dir):
    loaded = load_model(str(llama_dir))
    ids = loaded.tokenizer(PROMPTS[1])["input_ids"]
    greedy = int(loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    llama = client(servers["llama"])
    plain = llama.completions.create(model="llama", prompt=ids, max_tokens=1, temperature=0, logprobs=0)
    biased = llama.completions.create(model="llama", prompt=ids, max_tokens=1, temperature=0, logprobs=0,
                                      logit_bias={str(greedy): -100})
    assert plain.choices[0].logprobs.tokens != biased.choices[0].logprobs.tokens
    blocked = llama.completions.create(model="llama", prompt=ids, max_tokens=30, temperature=0, logprobs=0,
                                       extra_body={"no_repeat_ngram_size": 1, "ignore_eos": True})
    tokens = blocked.choices[0].logprobs.tokens
    words = [token for token in tokens if token.strip() and "\ufffd" not in token]  # byte pieces may share a spelling
    assert len(tokens) == 30 and len(words) > 5 and len(set(words)) == len(words)  # no token twice


@pytest.mark.parametrize("field,value", [("stop_token_ids", [5]), ("include_stop_str_in_output", True),
                                         ("min_p", 0.1), ("prompt_logprobs", 1), ("skip_special_tokens", False),
                                         ("truncate_prompt_tokens", 5), ("best_of", 3)])
def test_vllm_fields_this_server_cannot_honour_are_refused_not_ignored(field, value):
    """A client asking for one of vLLM's extras gets a 400 naming it, never an answer that quietly ignored it; the
    same field at its default (as benchmark clients send it) is accepted."""
    from llmcycle.deploy.serve.protocol import UNSUPPORTED, APIError, parse_completion

    with pytest.raises(APIError) as info:
        parse_completion({"model": "m", "prompt": "hi", field: value})
    assert info.value.status == 400 and info.value.param == field
    defaults = [d for d in UNSUPPORTED[field] if d is not None]
    parse_completion({"model": "m", "prompt": "hi", field: defaults[0] if defaults else None})
