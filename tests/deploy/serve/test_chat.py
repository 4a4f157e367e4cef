"""How a chat request becomes the prompt: vLLM's chat fields (add_generation_prompt, continue_final_message,
chat_template_kwargs, add_special_tokens, echo), earlier tool calls in the messages, and template errors as 400s;
then the same through a served model and the openai client."""

from __future__ import annotations

import json

import pytest

from llmcycle.deploy.serve.chat import parse_chat
from llmcycle.deploy.serve.protocol import APIError
from llmcycle.models import chat_renderer

TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.index0 > 0 and m.role == 'user' and messages[loop.index0 - 1].role == 'user' %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "<|{{ m.role }}|>{% if m.tool_calls %}{% for c in m.tool_calls %}call {{ c.function.name }}"
    "({{ c.function.arguments.city }}){% endfor %}{% else %}{{ m.content }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
    "<think></think>{% endif %}{% endif %}"
)
USER = {"role": "user", "content": "Weather in Oslo?"}


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def prompt_of(tokenizer, **fields) -> str:
    request = {"model": "m", "messages": [USER], **fields}
    return parse_chat(request, chat_renderer(tokenizer)).prompts[0]


def refusal(tokenizer, **fields) -> APIError:
    with pytest.raises(APIError) as info:
        prompt_of(tokenizer, **fields)
    assert info.value.status == 400
    return info.value


def test_template_variables_and_the_generation_prompt(tokenizer):
    assert prompt_of(tokenizer) == "<|user|>Weather in Oslo?\n<|assistant|>"
    assert prompt_of(tokenizer, chat_template_kwargs={"enable_thinking": False}).endswith("<|assistant|><think></think>")
    assert prompt_of(tokenizer, add_generation_prompt=False) == "<|user|>Weather in Oslo?\n"


def test_continue_final_message_leaves_the_reply_open(tokenizer):
    messages = [USER, {"role": "assistant", "content": "It is sunny and"}]
    prompt = prompt_of(tokenizer, messages=messages, add_generation_prompt=False, continue_final_message=True)
    assert prompt == "<|user|>Weather in Oslo?\n<|assistant|>It is sunny and"
    # vLLM's rule: both at once is a contradiction, and add_generation_prompt defaults to true
    assert refusal(tokenizer, messages=messages, continue_final_message=True).param == "continue_final_message"


@pytest.mark.parametrize("fields,param", [
    ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
    ({"chat_template": "{{ messages }}"}, "chat_template"),
    ({"documents": [{"title": "a", "text": "b"}]}, "documents"),
    ({"add_generation_prompt": "no"}, "add_generation_prompt"),
    ({"messages": [USER, USER]}, "messages"),  # the template itself refuses them
    ({"messages": [USER, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": {"name": "f"}}]}, "messages[1].tool_calls"),
])
def test_what_the_template_cannot_take_is_a_400_naming_it(tokenizer, fields, param):
    assert refusal(tokenizer, **fields).param == param


def test_earlier_tool_calls_reach_the_template_as_objects(tokenizer):
    """A tool loop sends back the assistant's call (arguments as a JSON string, as OpenAI returned them) and the
    tool's result; templates read the arguments as an object."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    prompt = prompt_of(tokenizer, messages=messages)
    assert prompt == "<|user|>Weather in Oslo?\n<|assistant|>call get_weather(Oslo)\n<|tool|>sunny\n<|assistant|>"
    plain = parse_chat({"model": "m", "messages": messages}, chat_renderer(object())).prompts[0]
    assert plain.splitlines()[1] == 'Assistant: {"name":"get_weather","arguments":{"city":"Oslo"}}'


def test_the_plain_layout_continues_a_message_too():
    render = chat_renderer(object())  # no chat template
    messages = [USER, {"role": "assistant", "content": "It is"}]
    request = {"model": "m", "messages": messages, "add_generation_prompt": False, "continue_final_message": True}
    assert parse_chat(request, render).prompts[0] == "User: Weather in Oslo?\nAssistant: It is"
    assert parse_chat({"model": "m", "messages": [USER]}, render).prompts[0].endswith("\nAssistant:")


def test_echo_puts_the_assistant_message_being_continued_before_the_reply(tokenizer):
    """vLLM's chat `echo`: the last message, when it is the assistant's, comes back before the reply; after a user
    message there is nothing of the reply's to echo."""
    messages = [USER, {"role": "assistant", "content": "It is sunny and"}]
    request = {"model": "m", "messages": messages, "echo": True, "add_generation_prompt": False, "continue_final_message": True}
    assert parse_chat(request, chat_renderer(tokenizer)).reply_prefix == "It is sunny and"
    assert parse_chat({"model": "m", "messages": [USER], "echo": True}, chat_renderer(tokenizer)).reply_prefix == ""


def test_add_special_tokens_reaches_the_tokenizer(t5_dir):
    """Chat's default: a template writes its own special tokens, so none are added; completions' default adds them
    (vLLM's defaults); either route may ask otherwise. (T5's tokenizer adds an EOS.)"""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from llmcycle.deploy.serve.handling import prompt_ids
    from llmcycle.deploy.serve.protocol import parse_completion

    tokenizer = AutoTokenizer.from_pretrained(t5_dir)
    tokenizer.chat_template = TEMPLATE
    vocabulary = SimpleNamespace(num_embeddings=len(tokenizer))
    served = SimpleNamespace(loaded=SimpleNamespace(tokenizer=tokenizer, model=SimpleNamespace(get_input_embeddings=lambda: vocabulary)))
    eos = tokenizer.eos_token_id
    chat = parse_chat({"model": "m", "messages": [USER]}, chat_renderer(tokenizer))
    asked = parse_chat({"model": "m", "messages": [USER], "add_special_tokens": True}, chat_renderer(tokenizer))
    assert prompt_ids(served, chat)[0][-1] != eos and prompt_ids(served, asked)[0] == [*prompt_ids(served, chat)[0], eos]
    plain = parse_completion({"model": "m", "prompt": "hello"})
    bare = parse_completion({"model": "m", "prompt": "hello", "add_special_tokens": False})
    assert prompt_ids(served, plain)[0] == [*prompt_ids(served, bare)[0], eos]


@pytest.mark.slow
def test_a_served_chat_takes_vllms_fields_through_the_openai_client(llama_dir, tokenizer, tmp_path):
    """The rendered prompt is what the server continues: chat at temperature 0 equals a completion of the text the
    template makes of the same fields, and /tokenize counts the tokens chat bills."""
    import shutil

    openai = pytest.importorskip("openai")
    from serving import http, start

    from llmcycle.deploy.serve.config import ServerConfig

    model = tmp_path / "llama"
    shutil.copytree(llama_dir, model)
    tokenizer.save_pretrained(model)  # the same tokenizer, with TEMPLATE
    server = start(ServerConfig(str(model), [], served_model_name="llama"))
    try:
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
        messages = [USER, {"role": "assistant", "content": "It is sunny and"}]
        fields = {"add_generation_prompt": False, "continue_final_message": True,
                  "chat_template_kwargs": {"enable_thinking": False}}
        chat = api.chat.completions.create(model="llama", messages=messages, max_tokens=6, temperature=0, extra_body=fields)
        text = "<|user|>Weather in Oslo?\n<|assistant|>It is sunny and"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # templates write their own BOS
        completion = api.completions.create(model="llama", prompt=ids, max_tokens=6, temperature=0)
        assert chat.choices[0].message.content == completion.choices[0].text
        assert chat.usage.prompt_tokens == len(ids)
        echoed = api.chat.completions.create(model="llama", messages=messages, max_tokens=6, temperature=0,
                                             extra_body={**fields, "echo": True})
        # the reply keeps its whitespace after the echoed message, as a completion does after its echoed prompt
        unstripped = api.completions.create(model="llama", prompt=ids, max_tokens=6, temperature=0, echo=True).choices[0].text
        assert echoed.choices[0].message.content == "It is sunny and" + unstripped[len(tokenizer.decode(ids)):]
        spaced = next(i for i in range(len(tokenizer)) if tokenizer.decode([i]).startswith(" ") and tokenizer.decode([i]).strip())
        word = tokenizer.decode([spaced])
        forced = api.chat.completions.create(model="llama", messages=messages, max_tokens=2, temperature=0,
                                             logit_bias={str(spaced): 100}, extra_body={**fields, "echo": True})
        assert forced.choices[0].message.content == "It is sunny and" + word * 2  # not "...and" + word glued
        streamed = api.chat.completions.create(model="llama", messages=messages, max_tokens=6, temperature=0,
                                               extra_body={**fields, "echo": True}, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == echoed.choices[0].message.content
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
        with pytest.raises(openai.BadRequestError) as info:
            api.chat.completions.create(model="llama", messages=messages, max_tokens=6, tools=[tool], tool_choice="required",
                                        extra_body={**fields, "echo": True})
        assert info.value.body["param"] == "echo"
        status, counted, _ = http(server.url + "/tokenize", json.dumps({"messages": messages, **fields}).encode(),
                                  {"Content-Type": "application/json"})
        assert status == 200 and counted["tokens"] == ids
        with pytest.raises(openai.BadRequestError) as info:
            api.chat.completions.create(model="llama", messages=[USER, USER], max_tokens=2)
        assert info.value.body["param"] == "messages" and "alternate" in info.value.body["message"]
        assert http(server.url + "/health")[0] == 200
    finally:
        server.stop()
