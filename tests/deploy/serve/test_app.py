"""`llmcycle serve` with the official openai client: a tiny Llama and a tiny T5, each with two LoRA adapters and one
prompt-tuning adapter, on loopback servers started in background threads and always stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import peft_forward_greedy, prefix_adapter, run_cli, write_jsonl
from serving import MAX_TOKENS, NAMES, PROMPTS, _health, cli_generate, free_port, http, make_adapters, setups, start  # noqa: F401  (setups: fixture)

openai = pytest.importorskip("openai")

from llmcycle.deploy.serve.config import ServerConfig  # noqa: E402
from llmcycle.deploy.serve.jobs import Finished, TextDelta  # noqa: E402
from llmcycle.deploy.serve.listening import bind  # noqa: E402
from llmcycle.deploy.serve.server import RunningServer  # noqa: E402


@pytest.fixture(scope="module")
def servers(setups):
    running = {}
    try:
        for arch, (base, adapters) in setups.items():
            config = ServerConfig(str(base), [(name, str(path)) for name, path in adapters.items()], served_model_name=arch,
                                  max_num_seqs=16, allow_adapter_loading=True)
            running[arch] = start(config)
        yield running
    finally:
        for server in running.values():
            server.stop()


def client(server: RunningServer, key: str = "EMPTY", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60, **kwargs)


def complete(server, model: str, prompt, **kwargs):
    kwargs.setdefault("max_tokens", MAX_TOKENS)
    kwargs.setdefault("temperature", 0)
    return client(server).completions.create(model=model, prompt=prompt, **kwargs)


@pytest.mark.slow
def test_model_cards(servers, setups):
    cards = {card.id: card for card in client(servers["llama"]).models.list().data}
    assert set(cards) == {"llama", *NAMES}
    lora = cards["lora1"].model_dump()
    assert (lora["parent"], lora["root"], lora["adapter_type"], lora["rank"]) == ("llama", str(setups["llama"][1]["lora1"]), "lora", 4)
    assert cards["soft"].model_dump()["adapter_type"] == "prompt_tuning"
    assert client(servers["llama"]).models.retrieve("lora2").model_dump()["rank"] == 2
    with pytest.raises(openai.NotFoundError):
        client(servers["llama"]).models.retrieve("nope")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_temperature_zero_equals_llmcycle_generate(arch, servers, setups, capsys, tmp_path):
    base, adapters = setups[arch]
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    served = {}
    for name in [arch, *NAMES]:
        answer = complete(servers[arch], name, PROMPTS)
        served[name] = [choice.text for choice in sorted(answer.choices, key=lambda c: c.index)]
        adapter = None if name == arch else (name, adapters[name])
        if arch == "llama" and name == "soft":
            expected = [peft_forward_greedy(base, adapters[name], prompt, MAX_TOKENS) for prompt in PROMPTS]
        else:
            expected = cli_generate(capsys, base, prompts_file, adapter)
        assert served[name] == expected, name
    for name in NAMES:  # an adapter that silently did nothing would answer like the base
        assert served[name] != served[arch], name
    assert len(set(served[arch])) > 1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_stream_usage_stop_and_length(arch, servers, setups):
    server, prompt = servers[arch], PROMPTS[0]
    whole = complete(server, "lora1", prompt)
    text = whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == MAX_TOKENS
    from transformers import AutoTokenizer

    assert whole.usage.prompt_tokens == len(AutoTokenizer.from_pretrained(setups[arch][0])(prompt)["input_ids"])
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + MAX_TOKENS
    chunks = list(complete(server, "lora1", prompt, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    # vLLM's continuous_usage_stats: every chunk counts the choice's tokens so far
    running = list(complete(server, "lora1", prompt, stream=True,
                            stream_options={"include_usage": True, "continuous_usage_stats": True}))
    counts = [c.usage.completion_tokens for c in running[:-1]]
    assert counts == sorted(counts) and counts[-1] == MAX_TOKENS and 0 < counts[0] < MAX_TOKENS
    assert all(c.usage.prompt_tokens == whole.usage.prompt_tokens for c in running)
    assert running[-1].usage.model_dump() == whole.usage.model_dump()
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), f"pick a prompt whose answer has text to stop at: {text!r}"
    stopped = complete(server, "lora1", prompt, stop=[stop, "zzzz", "yyyy", "xxxx", "wwww"])  # more than OpenAI's 4, as vLLM takes
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)].strip()
    streamed = complete(server, "lora1", prompt, stop=[stop, "zzzz"], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == stopped.choices[0].text


@pytest.mark.slow
def test_chat_completions(servers):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "plan a trip"}]
    chat = client(servers["t5"]).chat.completions.create(model="lora2", messages=messages, max_tokens=8, temperature=0)
    expected = complete(servers["t5"], "lora2", "System: be brief\nUser: plan a trip\nAssistant:", max_tokens=8)
    assert chat.choices[0].message.content == expected.choices[0].text
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens == expected.usage.prompt_tokens
    stream = client(servers["t5"]).chat.completions.create(model="lora2", messages=messages, max_tokens=8, temperature=0,
                                                           stream=True)
    deltas = [c.choices[0].delta for c in stream]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == chat.choices[0].message.content


async def _gather(server, requests: list[dict]):
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120) as aclient:
        return await asyncio.gather(*(aclient.completions.create(**request) for request in requests))


@pytest.mark.slow
def test_seeded_sampling_and_n(servers):
    server = servers["llama"]
    sample = dict(model="soft", prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=1.5, seed=7, n=3)
    alone = complete(server, **sample)
    texts = [c.text for c in sorted(alone.choices, key=lambda c: c.index)]
    assert [c.index for c in sorted(alone.choices, key=lambda c: c.index)] == [0, 1, 2]
    assert len(set(texts)) > 1, "choices of one request are sampled independently"
    others = [dict(model=name, prompt=p, max_tokens=MAX_TOKENS, temperature=1.0) for name in NAMES for p in PROMPTS]
    answers = asyncio.run(_gather(server, others[:4] + [sample] + others[4:]))
    assert [c.text for c in sorted(answers[4].choices, key=lambda c: c.index)] == texts
    assert complete(server, **{**sample, "seed": 8}).choices[0].text != texts[0] or texts[0] == ""


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_64_concurrent_requests_over_mixed_adapters(arch, servers):
    server = servers[arch]
    names = [arch, *NAMES]
    expected = {(name, p): complete(server, name, p).choices[0].text for name in names for p in PROMPTS}
    requests = [dict(model=names[i % 4], prompt=PROMPTS[(i // 4) % 3], max_tokens=MAX_TOKENS, temperature=0) for i in range(64)]
    answers = asyncio.run(_gather(server, requests))
    for request, answer in zip(requests, answers):
        assert answer.choices[0].text == expected[(request["model"], request["prompt"])], request
    assert http(server.url + "/health")[0] == 200
    assert settled_metric(server, "vllm:num_requests_running", 0) == 0


def metric(server, name: str) -> float:
    _, body, _ = http(server.url + "/metrics")
    lines = [line for line in body["text"].splitlines() if line.startswith(name + "{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def settled_metric(server, name: str, expected: float) -> float:
    """The metric once it shows `expected`, or its value after 10 s (the engine updates it after its last event)."""
    for _ in range(200):
        value = metric(server, name)
        if value == expected:
            break
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def strict_server(setups):
    base, adapters = setups["llama"]
    config = ServerConfig(str(base), [("lora1", str(adapters["lora1"]))], served_model_name="llama", api_key="sekret", max_num_seqs=1,
                          max_queued_requests=1, max_model_len=64, max_request_bytes=4096)
    server = start(config)
    yield server
    server.stop()


@pytest.mark.slow
def test_auth_and_unknown_model(strict_server):
    with pytest.raises(openai.AuthenticationError) as info:
        client(strict_server, key="wrong").models.list()
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    assert http(strict_server.url + "/v1/models")[0] == 401
    for open_route in ("/health", "/ping", "/metrics", "/"):
        assert http(strict_server.url + open_route)[0] == 200, open_route
    assert http(strict_server.url + "/ping", b"")[0] == 200  # POST too, as vLLM answers it
    with pytest.raises(openai.NotFoundError) as info:
        client(strict_server, key="sekret").completions.create(model="nope", prompt="hi", max_tokens=2)
    assert info.value.body["param"] == "model" and "lora1" in info.value.body["message"]


@pytest.mark.slow
def test_tokenize_and_detokenize_as_vllm_serves_them(strict_server, llama_dir):
    """Outside /v1 and the API key, as in vLLM; the served tokenizer's ids, and back."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    post = lambda route, body: http(strict_server.url + route, json.dumps(body).encode(), {"Content-Type": "application/json"})  # noqa: E731
    status, body, _ = post("/tokenize", {"model": "lora1", "prompt": "hello there", "return_token_strs": True})
    assert status == 200 and body["tokens"] == tokenizer("hello there")["input_ids"] and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 64 and body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])
    assert post("/detokenize", {"tokens": body["tokens"]})[1] == {"prompt": tokenizer.decode(body["tokens"])}
    status, chat, _ = post("/tokenize", {"messages": [{"role": "user", "content": "hello there"}]})
    assert status == 200 and chat["count"] > body["count"] and chat["token_strs"] is None  # the template's words too
    for route, request, param in [("/tokenize", {"prompt": 3}, "prompt"), ("/tokenize", {"prompt": "hi", "model": "nope"}, "model"),
                                  ("/detokenize", {"tokens": [1, 10**9]}, "tokens"), ("/detokenize", {"tokens": "1 2"}, "tokens"),
                                  ("/tokenize", {"prompt": "hi", "add_special_tokens": "yes"}, "add_special_tokens")]:
        status, error, _ = post(route, request)
        assert status in (400, 404) and error["error"]["param"] == param, (route, request)
    assert http(strict_server.url + "/version")[1]["version"]


@pytest.mark.slow
@pytest.mark.parametrize("body,param", [
    (b"{not json", "body"),
    (json.dumps({"model": "lora1", "prompt": "hi", "temperature": 5}).encode(), "temperature"),
    (json.dumps({"model": "lora1", "prompt": "hi", "n": 0}).encode(), "n"),
    (json.dumps({"model": "lora1", "prompt": "hi", "max_tokens": -1}).encode(), "max_tokens"),
    (json.dumps({"model": "lora1", "prompt": "hi", "stop": [f"s{i}" for i in range(65)]}).encode(), "stop"),
    (json.dumps({"model": "lora1", "prompt": 3}).encode(), "prompt"),
    (json.dumps({"model": "lora1", "prompt": "hi", "stream": "yes"}).encode(), "stream"),
    (json.dumps({"model": "lora1", "prompt": "hi", "presence_penalty": 2.5}).encode(), "presence_penalty"),
    (json.dumps({"model": "lora1", "prompt": "hi", "repetition_penalty": 0}).encode(), "repetition_penalty"),
    (json.dumps({"model": "lora1", "prompt": "hi", "logit_bias": {"x": 1}}).encode(), "logit_bias"),
    (json.dumps({"model": "lora1", "prompt": "hi", "logit_bias": {"9999999": 1}}).encode(), "logit_bias"),
    (json.dumps({"model": "lora1", "prompt": "hi", "max_tokens": 2, "min_tokens": 3}).encode(), "min_tokens"),
    (json.dumps({"model": "lora1", "prompt": "hi", "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"model": "lora1", "prompt": "word " * 200}).encode(), "prompt"),
    (json.dumps({"model": "lora1", "prompt": "hi", "max_tokens": 500}).encode(), "max_tokens"),
])
def test_bad_requests_get_400(strict_server, body, param):
    headers = {"Authorization": "Bearer sekret", "Content-Type": "application/json"}
    status, answer, _ = http(strict_server.url + "/v1/completions", body, headers)
    assert status == 400 and answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"
    assert http(strict_server.url + "/health")[0] == 200


@pytest.mark.slow
def test_too_long_prompt_names_the_limit(strict_server):
    with pytest.raises(openai.BadRequestError) as info:
        client(strict_server, key="sekret").completions.create(model="lora1", prompt="word " * 200, max_tokens=4)
    assert "64 tokens" in info.value.body["message"] and info.value.body["code"] == "context_length_exceeded"


@pytest.mark.slow
def test_oversized_body_gets_413(strict_server):
    body = json.dumps({"model": "lora1", "prompt": "x" * 10_000}).encode()
    status, answer, _ = http(strict_server.url + "/v1/completions", body, {"Authorization": "Bearer sekret"})
    assert status == 413 and "4096" in answer["error"]["message"]


@pytest.mark.slow
def test_full_queue_gets_429_and_disconnect_frees_the_slot(setups):
    server = start(ServerConfig(str(setups["t5"][0]), served_model_name="t5", max_num_seqs=1, max_queued_requests=1))
    try:
        asyncio.run(_queue_and_disconnect(server))
        assert http(server.url + "/health")[0] == 200
    finally:
        server.stop()


async def _queue_and_disconnect(server):
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60) as aclient:
        # T5's decoder has no length limit: with ignore_eos this stream runs until its client goes away
        stream = await aclient.completions.create(model="t5", prompt="hi", max_tokens=1_000_000, stream=True,
                                                  extra_body={"ignore_eos": True})
        await stream.__anext__()  # the only slot is taken
        calls = [asyncio.ensure_future(aclient.completions.create(model="t5", prompt="hi", max_tokens=2)) for _ in range(3)]
        for _ in range(300):  # two of the three are refused at once; one waits in the queue
            if sum(call.done() for call in calls) >= 2:
                break
            await asyncio.sleep(0.05)
        refused = [call.exception() for call in calls if call.done()]
        assert len(refused) == 2 and all(isinstance(e, openai.RateLimitError) for e in refused), refused
        assert refused[0].response.headers.get("retry-after") == "1"
        assert metric(server, "vllm:num_requests_running") == 1 and metric(server, "vllm:num_requests_waiting") == 1
        await stream.close()  # the client goes away mid-stream: its slot goes to the queued request
        waiting = next(call for call in calls if not call.done())
        answer = await asyncio.wait_for(waiting, timeout=60)
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert settled_metric(server, "vllm:num_requests_running", 0) == 0


@pytest.mark.slow
def test_load_and_unload_adapter(servers, setups):
    server = servers["t5"]
    path = str(setups["t5"][1]["lora2"])
    status, _, _ = http(server.url + "/v1/load_lora_adapter", json.dumps({"lora_name": "late", "lora_path": path}).encode())
    assert status == 200
    assert "late" in {card.id for card in client(server).models.list().data}
    assert complete(server, "late", PROMPTS[0]).choices[0].text == complete(server, "lora2", PROMPTS[0]).choices[0].text
    assert http(server.url + "/v1/unload_lora_adapter", json.dumps({"lora_name": "late"}).encode())[0] == 200
    with pytest.raises(openai.NotFoundError):
        complete(server, "late", PROMPTS[0])


@pytest.mark.slow
def test_request_timeout(setups):
    base, _ = setups["t5"]
    server = start(ServerConfig(str(base), served_model_name="t5", request_timeout=0.01, max_num_seqs=1))
    try:
        with pytest.raises(openai.APIStatusError) as info:
            complete(server, "t5", ["hello"] * 4, max_tokens=400)
        assert info.value.status_code == 408
        assert http(server.url + "/health")[0] == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_cli_serves_and_stops_on_sigterm(setups):
    base, adapters = setups["llama"]
    port = free_port()
    command = [sys.executable, "-m", "llmcycle", "serve", str(base), "--enable-lora", "--lora-modules",
               f"a={adapters['lora1']}", f"b={adapters['lora2']}", "--served-model-name", "tiny", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        for _ in range(600):
            if process.poll() is not None or _health(port) == 200:
                break
            time.sleep(0.1)
        assert _health(port) == 200
        _, models, _ = http(f"http://127.0.0.1:{port}/v1/models")
        assert [card["id"] for card in models["data"]] == ["tiny", "a", "b"]
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and "from openai import OpenAI" in output


def test_cli_refuses_what_it_cannot_serve(setups, tmp_path, capsys):
    t5_base, _ = setups["t5"]
    prefix = prefix_adapter(t5_base, tmp_path / "prefix", True)
    assert run_cli("serve", "--model", t5_base, "--adapter", f"p={prefix}", "--port", free_port()) == 2
    assert "prefix-tuning adapters are served for decoder-only models only" in capsys.readouterr().err
    assert run_cli("serve", "--model", t5_base, "--adapter", f"x={tmp_path / 'missing'}", "--port", free_port()) == 2
    assert "adapter_config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_prefix_tuning_adapter_shares_the_batch(setups, tmp_path):
    base, adapters = setups["llama"]
    prefix = prefix_adapter(base, tmp_path / "prefix", False)
    server = start(ServerConfig(str(base), [("lora1", str(adapters["lora1"])), ("prefix", str(prefix))], served_model_name="llama"))
    try:
        requests = [dict(model=name, prompt=p, max_tokens=MAX_TOKENS, temperature=0) for name in ("prefix", "lora1") for p in PROMPTS]
        answers = asyncio.run(_gather(server, requests))
        card = client(server).models.retrieve("prefix").model_dump()
    finally:
        server.stop()
    assert card["adapter_type"] == "prefix_tuning"
    served = [answer.choices[0].text for answer in answers[: len(PROMPTS)]]
    assert served == [peft_forward_greedy(base, prefix, p, MAX_TOKENS) for p in PROMPTS]  # peft's forward, as for prompt tuning
    assert served != [answer.choices[0].text for answer in answers[len(PROMPTS):]]


def test_lora_modules_spellings():
    from llmcycle.cli.serve import parse_lora_modules, split_positionals

    model, extra = split_positionals(None, ("a=/x",), ("base-dir", "b=/y"))
    assert model == "base-dir"
    assert parse_lora_modules(("a=/x",), extra) == [("a", "/x"), ("b", "/y")]
    assert parse_lora_modules(('{"name": "c", "path": "/z"}',), ()) == [("c", "/z")]


@pytest.mark.slow
def test_503_while_loading(setups):
    import threading

    server = RunningServer(ServerConfig(str(setups["t5"][0])), bind("127.0.0.1", 0))
    server.loader = threading.Thread(target=lambda: None)  # the model never finishes loading
    server.start()
    try:
        for _ in range(200):
            if server.server.started:
                break
            time.sleep(0.05)
        assert http(server.url + "/health")[0] == 503
        body = json.dumps({"model": "t5", "prompt": "hi"}).encode()
        status, answer, _ = http(server.url + "/v1/completions", body)
        assert status == 503 and "loading" in answer["error"]["message"]
    finally:
        server.stop()


@pytest.mark.slow
def test_token_id_prompts_and_n_limit(servers, setups):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(setups["llama"][0])(PROMPTS[1])["input_ids"]
    by_ids = complete(servers["llama"], "lora2", [ids])
    assert by_ids.choices[0].text == complete(servers["llama"], "lora2", PROMPTS[1]).choices[0].text
    with pytest.raises(openai.BadRequestError) as info:
        complete(servers["llama"], "lora2", "hi", n=17)  # more choices than --max-num-seqs 16
    assert info.value.body["param"] == "n"


@pytest.mark.slow
def test_an_engine_failure_fails_its_requests_and_the_server_goes_on(servers, monkeypatch):
    engine = servers["t5"].state.engine
    original = engine._decode

    def broken():
        monkeypatch.setattr(engine, "_decode", original)  # fails once
        raise RuntimeError("injected")

    monkeypatch.setattr(engine, "_decode", broken)
    with pytest.raises(openai.InternalServerError) as info:
        complete(servers["t5"], "lora1", PROMPTS[0])
    assert "injected" in info.value.body["message"]
    assert complete(servers["t5"], "lora1", PROMPTS[0]).choices[0].finish_reason == "length"


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_continuous_batching_equals_generate_on_more_architectures(arch, request, tmp_path):
    """Absolute positions: GPT-2's learned ones (rows join mid-batch with their own position ids) and BART's decoder
    (new rows wait for an empty batch). Requests arrive at different steps, with different lengths and adapters."""
    from llmcycle.deploy.serve.engine import Engine
    from llmcycle.deploy.serve.jobs import Job
    from llmcycle.deploy.serve.metrics import Metrics
    from llmcycle.deploy.serve.models import load_served
    from llmcycle.deploy.serve.protocol import SamplingParams
    from llmcycle.generate.engine import GenerationSettings, generate
    from llmcycle.models import ModelOptions

    from conftest import build

    base = request.getfixturevalue("gpt2_dir") if arch == "gpt2" else build("bart", tmp_path / "bart")
    adapters = make_adapters(base, tmp_path / "adapters", arch == "bart")
    served = load_served(str(base), [(name, str(path)) for name, path in adapters.items()])
    engine, texts, widest = Engine(served, Metrics(arch), max_num_seqs=8), {}, 0
    plan = [(name, prompt, 6 + 3 * i) for i, (name, prompt) in enumerate((n, p) for n in [None, *NAMES] for p in PROMPTS)]
    for step in range(400):
        if step % 3 == 0 and step // 3 < len(plan):  # a new request every third step
            name, prompt, tokens = plan[step // 3]
            sink = _collector(texts, (name, prompt))
            ids = served.loaded.tokenizer(prompt)["input_ids"]
            engine.submit([Job(name or arch, served.adapter_for(name) if name else None, ids, SamplingParams(max_tokens=tokens, temperature=0), sink)])
        engine.step()
        widest = max(widest, engine.stats().running_rows)
        if len(texts) == len(plan):
            break
    assert widest > 3, "requests should have been decoded together"
    for name in [None, *NAMES]:
        options = ModelOptions(str(base), adapters=[(name, str(adapters[name]))] if name else [], use=name)
        loaded = options.load()
        for (planned, prompt, tokens) in plan:
            if planned != name or (arch == "gpt2" and name == "soft"):  # see peft_forward_greedy
                continue
            assert texts[(name, prompt)] == generate(loaded, [prompt], GenerationSettings(max_new_tokens=tokens, batch_size=1))[0]


def _collector(texts: dict, key):
    pieces = []

    def sink(event):
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        elif isinstance(event, Finished):
            texts[key] = "".join(pieces)
    return sink


def test_partial_stop_sequences_are_held_back():
    from llmcycle.deploy.serve.text import TextTracker

    class Characters:  # one token per character
        def decode(self, tokens, skip_special_tokens=True):
            return "".join(chr(t) for t in tokens)

    tracker = TextTracker(Characters(), stop=["##END"])
    sent = [tracker.push(ord(c), final=False) for c in " ab #"]
    assert "".join(d for d, _ in sent) == "ab"  # leading space stripped, " #" may begin the stop or end the text
    assert tracker.push(ord("#"), final=False) == ("", False)
    assert tracker.push(ord("x"), final=False) == (" ##x", False)  # not the stop after all
    for c in "##EN":
        assert tracker.push(ord(c), final=False)[0] == ""
    assert tracker.push(ord("D"), final=False) == ("", True)
    assert tracker.text == "ab ##x"
    after_echo = TextTracker(Characters(), keep_whitespace=True)  # the completion follows its echoed prompt
    sent = [after_echo.push(ord(c), final=False) for c in " ab "]
    assert "".join(d for d, _ in sent) == " ab" and after_echo.push(None, final=True) == (" ", False)
    assert after_echo.text == " ab "


@pytest.mark.slow
def test_run_folders_serve_as_generate_reads_them(setups, tmp_path, capsys):
    """A quantised run folder with its adapter (as the quickstart writes): served under its name, as generate reads it."""
    base, adapters = setups["llama"]
    out = tmp_path / "int8"
    assert run_cli("quantize", "-m", base, "--adapter", adapters["lora1"], "--method", "int8-dynamic", "-o", out) == 0
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    expected = cli_generate(capsys, out, prompts_file, None)
    server = start(ServerConfig(str(out), [("soft", str(adapters["soft"]))]))
    try:
        answer = complete(server, "int8", PROMPTS)
        assert [c.text for c in sorted(answer.choices, key=lambda c: c.index)] == expected
        assert [card.id for card in client(server).models.list().data] == ["int8", "soft"]
    finally:
        server.stop()


@pytest.mark.slow
def test_a_client_gone_from_a_json_answer_frees_its_row(servers):
    with pytest.raises(openai.APITimeoutError):  # T5's decoder has no length limit: this runs until the client goes
        client(servers["t5"]).with_options(timeout=1.5).completions.create(
            model="t5", prompt="hi", max_tokens=1_000_000, extra_body={"ignore_eos": True})
    assert settled_metric(servers["t5"], "vllm:num_requests_running", 0) == 0


@pytest.mark.slow
def test_no_queue_still_serves_what_fits(setups):
    server = start(ServerConfig(str(setups["t5"][0]), served_model_name="t5", max_queued_requests=0))
    try:
        assert complete(server, "t5", PROMPTS).choices[0].finish_reason == "length"
    finally:
        server.stop()
