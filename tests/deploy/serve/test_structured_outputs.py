"""Structured outputs and forced tool calls through `llmcycle serve`, with the official openai client: JSON mode, a
JSON schema, a regex and a choice list held token by token on a tiny Llama (and a T5) whose free replies are noise,
in batches shared with unconstrained requests; tools answered as OpenAI's tool_calls; what cannot be enforced is a
400 naming it, and the server goes on serving."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest

from llmcycle.deploy.serve.config import ServerConfig
from llmcycle.deploy.serve.guided import attach, parse_guide
from llmcycle.deploy.serve.protocol import APIError, parse_completion
from llmcycle.deploy.serve.server import RunningServer
from serving import start

openai = pytest.importorskip("openai")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "colour": {"enum": ["red", "green", "blue"]},
        "sizes": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 3},
        "owner": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                                                   "active": {"type": "boolean"}},
                  "required": ["id", "active"], "additionalProperties": False},
    },
    "required": ["name", "colour", "sizes", "owner"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}},
    "required": ["zone"], "additionalProperties": False}}}
MESSAGES = [{"role": "user", "content": "Describe the product in JSON: a red mug."}]
REGEX = r"[0-9]{3}-(ab|cd)"
CHOICES = ["yes", "no way", "maybe"]
MAX_TOKENS = 200  # room for the bounded schemas to close


def test_the_fields_parse_into_one_constraint():
    base = {"model": "m", "prompt": "hi"}
    for extra in ({"response_format": {"type": "json_object"}}, {"structured_outputs": {"regex": "a+"}},
                  {"guided_choice": ["a", "b"]}, {"guided_json": json.dumps(SCHEMA)}, {"guided_grammar": 'root ::= "x"'}):
        parsed = attach(parse_completion({**base, **extra}), parse_guide({**base, **extra}, chat=False))
        assert parsed.params.constraint is not None, extra
    assert parse_guide({**base, "response_format": {"type": "text"}}, chat=False) is None
    for extra, param in [({"guided_regex": "a", "structured_outputs": {"choice": ["b"]}}, "guided_regex"),
                         ({"response_format": {"type": "xml"}}, "response_format"),
                         ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
                         ({"structured_outputs": {}}, "structured_outputs"),
                         ({"guided_grammar": "root ::= ("}, "guided_grammar"),
                         ({"tools": [WEATHER]}, "tools")]:
        with pytest.raises(APIError) as caught:
            parse_guide({**base, **extra}, chat=False)
        assert caught.value.status == 400 and caught.value.param == param, extra
    both = {"guided_regex": "a", "structured_outputs": {"choice": ["b"]}}
    with pytest.raises(APIError, match="structured_outputs.choice, guided_regex"):
        parse_guide({**base, **both}, chat=False)


def test_tool_choices_parse():
    chat = {"model": "m", "messages": MESSAGES, "tools": [WEATHER, TIME]}
    named = parse_guide({**chat, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, chat=True)
    assert named.tool.name == "get_time" and named.param == "tools[1].function.parameters"
    assert parse_guide({**chat, "tool_choice": "required"}, chat=True).tool.name is None
    assert parse_guide({**chat, "tool_choice": "none"}, chat=True) is None
    assert parse_guide({**chat}, chat=True, tool_template=True).tools_in_prompt == [WEATHER, TIME]
    for choice in ("auto", None, {"type": "function", "function": {"name": "nope"}}, "sometimes"):
        with pytest.raises(APIError) as caught:
            parse_guide({**chat, "tool_choice": choice}, chat=True)
        assert caught.value.param == "tool_choice", choice


def start_model(model_dir, name: str):
    return start(ServerConfig(str(model_dir), [], served_model_name=name, max_num_seqs=16))


@pytest.fixture(scope="module")
def llama_server(llama_dir):
    server = start_model(llama_dir, "llama")
    yield server
    server.stop()


def client(server: RunningServer, cls=None):
    return (cls or openai.OpenAI)(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)


def assert_valid_json(text: str, schema: dict | None) -> None:
    value = json.loads(text)
    if schema is not None:
        jsonschema.validate(value, schema)
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)  # compact: no optional whitespace


async def mixed_batch(server: RunningServer, temperature: float) -> tuple[list, list]:
    """JSON mode and a schema (chat and completions) sent together with unconstrained requests."""
    ask = client(server, openai.AsyncOpenAI)
    common = {"model": "llama", "max_tokens": MAX_TOKENS, "temperature": temperature, "seed": 3}
    schema_format = {"type": "json_schema", "json_schema": {"name": "product", "schema": SCHEMA, "strict": True}}
    constrained = [
        ask.chat.completions.create(messages=MESSAGES, response_format=schema_format, n=2, **common),
        ask.completions.create(prompt="A product as JSON:", extra_body={"structured_outputs": {"json": SCHEMA}}, **common),
        ask.chat.completions.create(messages=MESSAGES, response_format={"type": "json_object"}, **common),
    ]
    free = [ask.completions.create(prompt=f"hello there {i}", **{**common, "max_tokens": 30}) for i in range(3)]
    answers = await asyncio.gather(*constrained, *free)
    return answers[:len(constrained)], answers[len(constrained):]


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0, 1])
def test_json_schema_and_json_mode_share_a_batch_with_free_rows(llama_server, temperature):
    (schema_chat, schema_completion, json_mode), free = asyncio.run(mixed_batch(llama_server, temperature))
    for choice in schema_chat.choices:
        assert choice.finish_reason == "stop"
        assert_valid_json(choice.message.content, SCHEMA)
        assert list(json.loads(choice.message.content)) == list(SCHEMA["properties"])  # in the schema's order
    assert schema_completion.choices[0].finish_reason == "stop"
    assert_valid_json(schema_completion.choices[0].text, SCHEMA)
    if json_mode.choices[0].finish_reason == "stop":  # JSON mode bounds nothing: a tiny model may write on
        assert isinstance(json.loads(json_mode.choices[0].message.content), dict)
    else:
        assert json_mode.choices[0].finish_reason == "length" and json_mode.choices[0].message.content.startswith("{")
    assert any(not answer.choices[0].text.lstrip().startswith("{") for answer in free)  # free rows stay free


@pytest.mark.slow
def test_regex_and_choice_are_obeyed(llama_server):
    ask = client(llama_server)
    for temperature in (0, 1):
        regex = ask.completions.create(model="llama", prompt="Code:", max_tokens=20, temperature=temperature, n=3,
                                       extra_body={"structured_outputs": {"regex": REGEX}})
        chosen = ask.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=20, temperature=temperature, n=3,
                                             extra_body={"guided_choice": CHOICES})
        for choice in regex.choices:
            assert re.fullmatch(REGEX, choice.text) and choice.finish_reason == "stop"
        for choice in chosen.choices:
            assert choice.message.content in CHOICES and choice.finish_reason == "stop"
    cut = ask.completions.create(model="llama", prompt="Code:", max_tokens=2, temperature=0,
                                 extra_body={"guided_regex": "[a-z]{30}"})
    assert cut.choices[0].finish_reason == "length"


def check_call(call, tools: dict) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), tools[call.function.name]["function"]["parameters"])


@pytest.mark.slow
def test_named_and_required_tools_return_tool_calls(llama_server):
    ask, tools = client(llama_server), {"get_weather": WEATHER, "get_time": TIME}
    named = ask.chat.completions.create(model="llama", messages=MESSAGES, tools=[WEATHER, TIME], max_tokens=MAX_TOKENS,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = named.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [call.function.name for call in choice.message.tool_calls] == ["get_weather"]
    check_call(choice.message.tool_calls[0], tools)
    required = ask.chat.completions.create(model="llama", messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required",
                                           max_tokens=MAX_TOKENS, temperature=1, n=4, seed=5)
    for choice in required.choices:
        assert choice.finish_reason == "tool_calls"
        check_call(choice.message.tool_calls[0], tools)
    # cut short by max_tokens: the call comes back as far as its arguments got, as OpenAI and vLLM return it
    for stream in (False, True):
        cut = ask.chat.completions.create(model="llama", messages=MESSAGES, tools=[WEATHER, TIME], max_tokens=2, stream=stream,
                                          tool_choice={"type": "function", "function": {"name": "get_weather"}})
        if stream:
            chunks = [chunk.choices[0] for chunk in cut if chunk.choices]
            reason, calls = chunks[-1].finish_reason, [c for chunk in chunks for c in (chunk.delta.tool_calls or [])]
        else:
            reason, calls = cut.choices[0].finish_reason, cut.choices[0].message.tool_calls
        assert reason == "length" and [call.function.name for call in calls] == ["get_weather"]
        assert calls[0].function.arguments.startswith("{") and len(calls[0].function.arguments) < 12


@pytest.mark.slow
def test_a_streamed_tool_call_comes_in_openais_delta_shape(llama_server):
    stream = client(llama_server).chat.completions.create(
        model="llama", messages=MESSAGES, tools=[WEATHER], tool_choice="required", max_tokens=MAX_TOKENS, stream=True)
    deltas = [chunk.choices[0] for chunk in stream if chunk.choices]
    calls = [call for delta in deltas for call in (delta.delta.tool_calls or [])]
    assert deltas[-1].finish_reason == "tool_calls" and len(calls) == 1 and calls[0].index == 0
    check_call(calls[0], {"get_weather": WEATHER})


@pytest.mark.slow
def test_what_cannot_be_enforced_is_a_400_and_serving_goes_on(llama_server):
    ask = client(llama_server)
    refused = [
        ({"messages": MESSAGES, "tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "trained"),
        ({"messages": MESSAGES, "tools": [WEATHER]}, "tool_choice", "trained"),
        ({"messages": MESSAGES, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
        ({"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}}, "response_format", "not"),
        ({"messages": MESSAGES, "extra_body": {"guided_regex": "((", "guided_choice": ["a"]}}, "guided_regex", "guided_choice"),
        ({"messages": MESSAGES, "extra_body": {"structured_outputs": {"regex": "(("}}}, "structured_outputs.regex", "regex"),
    ]
    for kwargs, param, words in refused:
        with pytest.raises(openai.BadRequestError) as caught:
            ask.chat.completions.create(model="llama", max_tokens=5, **kwargs)
        error = caught.value.body
        assert caught.value.status_code == 400 and error["param"] == param and words in error["message"], kwargs
        served = ask.completions.create(model="llama", prompt="hello", max_tokens=3, temperature=0)  # sampled, it may end early
        assert served.choices[0].finish_reason == "length"
    ignored = ask.chat.completions.create(model="llama", messages=MESSAGES, tools=[WEATHER], tool_choice="none", max_tokens=3)
    assert ignored.choices[0].message.tool_calls is None


@pytest.mark.slow
def test_t5_follows_a_schema(t5_dir):
    server = start_model(t5_dir, "t5")
    try:
        answer = client(server).completions.create(model="t5", prompt="A product as JSON:", max_tokens=MAX_TOKENS, n=2,
                                                   temperature=1, seed=1, extra_body={"guided_json": SCHEMA})
    finally:
        server.stop()
    for choice in answer.choices:
        assert choice.finish_reason == "stop"
        assert_valid_json(choice.text, SCHEMA)


def test_a_template_that_renders_tools_gets_them_and_auto(llama_dir):
    from transformers import AutoTokenizer

    from llmcycle.deploy.serve.guided import template_has_tools
    from llmcycle.deploy.serve.chat import parse_chat
    from llmcycle.models import chat_renderer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    assert not template_has_tools(tokenizer)
    tokenizer.chat_template = ("{% if tools %}Tools: {{ tools | map(attribute='function.name') | join(', ') }}\n{% endif %}"
                               "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")
    assert template_has_tools(tokenizer)
    guide = parse_guide({"model": "m", "messages": MESSAGES, "tools": [WEATHER, TIME]}, chat=True, tool_template=True)
    assert guide.constraint is None and guide.tool is None  # "auto": the model decides, its reply is text
    request = {"model": "m", "messages": MESSAGES, "tools": [WEATHER, TIME]}
    prompt = parse_chat(request, chat_renderer(tokenizer), tools=guide.tools_in_prompt).prompts[0]
    unused = parse_guide({**request, "tool_choice": "none"}, chat=True, tool_template=True)  # rendered, as vLLM does
    assert unused.constraint is None and unused.tool is None and unused.tools_in_prompt == [WEATHER, TIME]
    assert prompt.startswith("Tools: get_weather, get_time\n") and prompt.endswith("assistant:")
