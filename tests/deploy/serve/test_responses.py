"""OpenAI's Responses API on `llmcycle serve`: requests translated into the chat completion they mean, and answered
in the Responses shape, through the official openai client (plain, streamed with `responses.stream`, JSON schema,
forced function calls, a tool loop's earlier items)."""

from __future__ import annotations

import json
import shutil

import pytest

from llmcycle.deploy.serve.protocol import APIError, bad
from llmcycle.deploy.serve.responses import chat_body, renamed

TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{% if m.tool_calls %}{% for c in m.tool_calls %}call "
            "{{ c.function.name }}{% endfor %}{% else %}{{ m.content }}{% endif %}{{ '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
WEATHER = {"type": "function", "name": "get_weather", "description": "the weather",
           "parameters": {"type": "object", "properties": {"sky": {"enum": ["sunny", "rainy"]}}, "required": ["sky"]}}


def test_a_responses_request_becomes_the_chat_completion_it_means():
    body = chat_body({"model": "m", "instructions": "be brief", "max_output_tokens": 7, "temperature": 0,
                      "input": [{"role": "user", "content": [{"type": "input_text", "text": "rain"}, {"type": "input_text", "text": "?"}]},
                                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
                                {"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
                      "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
                      "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}})
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["messages"][1] == {"role": "user", "content": "rain?"}
    assert [call["id"] for call in body["messages"][2]["tool_calls"]] == ["c1", "c2"]  # one assistant turn
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert body["max_tokens"] == 7 and body["temperature"] == 0
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True}}
    assert body["tools"] == [{"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat_body({"model": "m", "input": "hi"})["messages"] == [{"role": "user", "content": "hi"}]
    # vLLM's sampling extras pass under their own names (chat honours or refuses each)
    extras = {"ignore_eos": True, "top_k": 5, "repetition_penalty": 1.2, "stop": ["x"], "min_p": 0.1}
    assert {k: v for k, v in chat_body({"model": "m", "input": "hi", **extras}).items() if k in extras} == extras


@pytest.mark.parametrize("fields,param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"background": True}, "background"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input[0].content[0]"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"input": [{"type": "function_call_output", "call_id": "c1"}]}, "input[0]"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": []}, "input"),
    ({"instructions": 3}, "instructions"),
    ({"top_logprobs": 2}, "top_logprobs"),
])
def test_what_cannot_be_honoured_is_a_400_naming_the_field(fields, param):
    with pytest.raises(APIError) as info:
        chat_body({"model": "m", "input": "hi", **fields})
    assert info.value.status == 400 and info.value.param == param


def test_chat_side_errors_name_the_responses_fields():
    assert renamed(bad("max_tokens", "'max_tokens' must be in [0, 9]")).param == "max_output_tokens"
    assert renamed(bad("messages[2].role", "x")).param == "input"
    assert renamed(bad("tools[1].function.parameters", "x")).param == "tools[1].parameters"
    assert renamed(bad("response_format", "x")).param == "text.format"


@pytest.fixture(scope="module")
def server(llama_dir, tmp_path_factory):
    from serving import start
    from transformers import AutoTokenizer

    from llmcycle.deploy.serve.config import ServerConfig

    model = tmp_path_factory.mktemp("responses") / "llama"
    shutil.copytree(llama_dir, model)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(model)
    running = start(ServerConfig(str(model), [], served_model_name="llama"))
    yield running
    running.stop()


@pytest.mark.slow
def test_a_response_is_what_chat_gives_for_the_same_conversation(server):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
    reply = api.responses.create(model="llama", instructions="be brief", input="plan a trip", max_output_tokens=6, temperature=0)
    chat = api.chat.completions.create(model="llama", max_tokens=6, temperature=0, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "plan a trip"}])
    assert reply.output_text == chat.choices[0].message.content
    assert reply.usage.input_tokens == chat.usage.prompt_tokens and reply.usage.output_tokens == chat.usage.completion_tokens
    cut = chat.choices[0].finish_reason == "length"
    assert reply.status == ("incomplete" if cut else "completed")
    assert (reply.incomplete_details.reason if cut else reply.incomplete_details) == ("max_output_tokens" if cut else None)
    with api.responses.stream(model="llama", instructions="be brief", input="plan a trip", max_output_tokens=6,
                              temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == reply.output_text and final.usage.output_tokens == reply.usage.output_tokens
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-1] == "response.completed"


@pytest.mark.slow
def test_schemas_and_forced_function_calls_in_the_responses_shape(server, llama_dir):
    from transformers import AutoTokenizer

    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
    for temperature in (0, 1):
        shaped = api.responses.create(model="llama", input="weather?", max_output_tokens=20, temperature=temperature,
                                      text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER["parameters"]}})
        assert json.loads(shaped.output_text)["sky"] in ("sunny", "rainy") and shaped.status == "completed"
        called = api.responses.create(model="llama", input="weather?", max_output_tokens=20, temperature=temperature,
                                      tools=[WEATHER], tool_choice="required")
        call = called.output[0]
        assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments)["sky"] in ("sunny", "rainy")
    named = {"type": "function", "name": "get_weather"}
    whole = api.responses.create(model="llama", input="weather?", max_output_tokens=20, temperature=0, tools=[WEATHER],
                                 tool_choice=named).output[0]
    with api.responses.stream(model="llama", input="weather?", max_output_tokens=20, temperature=0, tools=[WEATHER],
                              tool_choice=named) as stream:
        streamed = stream.get_final_response().output[0]
    assert streamed.type == whole.type == "function_call" and streamed.arguments == whole.arguments
    with api.responses.stream(model="llama", input="weather?", max_output_tokens=2, temperature=0, tools=[WEATHER],
                              tool_choice="required") as stream:
        cut = stream.get_final_response()  # a call cut short keeps its arguments as far as they got
    assert cut.status == "incomplete" and cut.output[0].type == "function_call" and cut.output[0].status == "incomplete"
    assert cut.output[0].name == "get_weather" and cut.output[0].arguments.startswith("{")
    # the tool loop's next turn: the call and its output go back in as input items
    follow = api.responses.create(model="llama", max_output_tokens=4, temperature=0, tools=[WEATHER], input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}], tool_choice="none")
    assert follow.output[0].type == "message" and follow.usage.input_tokens > called.usage.input_tokens
    with pytest.raises(openai.BadRequestError) as info:
        api.responses.create(model="llama", input="hi", max_output_tokens=0)
    assert info.value.body["param"] == "max_output_tokens"
    with pytest.raises(openai.BadRequestError) as info:  # vLLM's extra, which chat refuses too
        api.responses.create(model="llama", input="hi", max_output_tokens=2, extra_body={"min_p": 0.2})
    assert info.value.body["param"] == "min_p"
    eos = AutoTokenizer.from_pretrained(llama_dir).eos_token_id
    bias = api.responses.create(model="llama", input="hi", max_output_tokens=3, temperature=0,
                                extra_body={"ignore_eos": True, "logit_bias": {str(eos): 100}})  # EOS forced, and ignored
    assert bias.usage.output_tokens == 3 and bias.status == "incomplete"


@pytest.mark.slow
def test_the_openai_clients_parse_helpers_get_their_pydantic_objects(server):
    """`chat.completions.parse`, `responses.parse` and `pydantic_function_tool` send strict JSON schemas made from a
    pydantic model and parse the reply back into it."""
    from typing import Literal

    from pydantic import BaseModel, Field

    openai = pytest.importorskip("openai")

    class Weather(BaseModel):
        sky: Literal["sunny", "rainy"]
        degrees: int = Field(ge=-40, le=50)

    api = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "weather?"}]
    for temperature in (0, 1):
        chat = api.chat.completions.parse(model="llama", messages=messages, response_format=Weather, max_tokens=30,
                                          temperature=temperature)
        assert isinstance(chat.choices[0].message.parsed, Weather)
        reply = api.responses.parse(model="llama", input="weather?", text_format=Weather, max_output_tokens=30,
                                    temperature=temperature)
        assert isinstance(reply.output_parsed, Weather)
        called = api.chat.completions.parse(model="llama", messages=messages, max_tokens=30, temperature=temperature,
                                            tools=[openai.pydantic_function_tool(Weather, name="report")], tool_choice="required")
        assert isinstance(called.choices[0].message.tool_calls[0].function.parsed_arguments, Weather)
