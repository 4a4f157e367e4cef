"""A chat request's own fields: its messages, and how the chat template makes them the prompt.

The messages are checked and kept as chat templates read them (an assistant's earlier `tool_calls` with their
arguments as objects, a tool result's `tool_call_id`); vLLM's chat fields shape the rendering:
`add_generation_prompt`, `continue_final_message`, `chat_template_kwargs` (variables the template reads) and
`echo` (the assistant message being continued comes back before the reply). A template that refuses the messages
(roles that must alternate, say) is a 400 naming `messages`, as vLLM answers it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .protocol import MAX_N, ParsedRequest, bad, common_fields, flag

ROLES = ("system", "user", "assistant", "tool", "developer")
CHAT_UNSUPPORTED = {  # vLLM's chat fields of that kind
    "chat_template": "this server renders chats with the model's own template",
    "documents": "this server does not pass documents to chat templates; put them in a message",
}
TEMPLATE_ARGUMENTS = {  # apply_chat_template's own arguments, which chat_template_kwargs may not set
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt", "continue_final_message",
    "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
    "tokenizer_kwargs",
}


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise bad(f"messages[{index}].content", "message content must be a string or a list of {\"type\": \"text\", \"text\": ...} parts")


def _tool_calls(calls, index: int) -> list[dict]:
    """An assistant message's earlier tool calls, with each call's arguments as an object: tool-calling chat templates
    read them so (transformers' convention; vLLM parses them the same way)."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise bad(where, f"'{where}' must be a list of {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}} objects")
    checked = []
    for number, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}[{number}].function", f"'{where}[{number}]' needs a function with a 'name'")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError as exc:
                raise bad(f"{where}[{number}].function.arguments", f"the arguments are not valid JSON: {exc}") from None
        checked.append({**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}})
    return checked


def parse_messages(messages) -> list[dict]:
    """Checked messages as chat templates read them: role (`developer` as `system`), content as text, and an
    assistant's `tool_calls`, a tool result's `tool_call_id` and a `name` where given."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad(f"messages[{index}].role", f"messages[{index}] needs a role, one of {', '.join(ROLES)}")
        role = "system" if message["role"] == "developer" else message["role"]
        item = {"role": role, "content": _content(message, index)}
        for name in ("name", "tool_call_id"):
            if message.get(name) is not None:
                if not isinstance(message[name], str):
                    raise bad(f"messages[{index}].{name}", f"'messages[{index}].{name}' must be a string")
                item[name] = message[name]
        if message.get("tool_calls") is not None:
            item["tool_calls"] = _tool_calls(message["tool_calls"], index)
        checked.append(item)
    return checked


@dataclass(frozen=True)
class ChatShape:
    """How a chat becomes the prompt (vLLM's chat fields): after the messages, the assistant's turn is opened
    (`add_generation_prompt`) or the last message is left open for the model to continue
    (`continue_final_message`); `variables` (`chat_template_kwargs`) are read by the template."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    variables: dict = field(default_factory=dict)


def chat_shape(data: dict) -> ChatShape:
    add, keep_open = flag(data, "add_generation_prompt", True), flag(data, "continue_final_message")
    if add and keep_open:
        raise bad("continue_final_message", "'continue_final_message' and 'add_generation_prompt' cannot both be true: "
                                            "send 'add_generation_prompt': false to continue the last message")
    variables = data.get("chat_template_kwargs")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise bad("chat_template_kwargs", "'chat_template_kwargs' must be an object of template variables, such as "
                                          "{\"enable_thinking\": false}")
    taken = sorted(TEMPLATE_ARGUMENTS.intersection(variables))
    if taken:
        raise bad("chat_template_kwargs", f"'chat_template_kwargs' may not set '{taken[0]}'" +
                  (": it is a request field of its own" if taken[0] in ("add_generation_prompt", "continue_final_message", "tools")
                   else ": it is an argument of the template call, not a template variable"))
    return ChatShape(add, keep_open, variables)


def render_chat(render, messages: list[dict], shape: ChatShape, tools: list | None = None) -> str:
    """The prompt text `render` (models.chat_renderer's) makes of the messages; 400 naming `messages` when the
    chat template refuses them (e.g. roles that must alternate), as vLLM answers it."""
    from jinja2.exceptions import TemplateError

    extra = {**shape.variables, **({"tools": tools} if tools else {})}
    if shape.continue_final_message:
        extra["continue_final_message"] = True
    try:
        return render(messages, shape.add_generation_prompt, **extra)
    except (TemplateError, ValueError) as exc:
        raise bad("messages", f"the model's chat template cannot render these messages: {exc}") from None


def parse_chat(data: dict, render, max_n: int = MAX_N, tools: list | None = None) -> ParsedRequest:
    """`render`: models.chat_renderer's (messages, add_generation_prompt, **template) -> prompt text; `tools`: the
    tools the chat template renders into the prompt (guided.py decides), if any."""
    common = common_fields(data, max_n, chat=True)
    for name, why in CHAT_UNSUPPORTED.items():
        if data.get(name) is not None:
            raise bad(name, f"'{name}' is not supported: {why}")
    messages = parse_messages(data.get("messages"))
    prompt = render_chat(render, messages, chat_shape(data), tools)
    echoed = messages[-1]["content"] if flag(data, "echo") and messages[-1]["role"] == "assistant" else ""
    common["params"].keep_whitespace = bool(echoed)
    return ParsedRequest(prompts=[prompt], chat=True, add_special_tokens=flag(data, "add_special_tokens", None),
                         reply_prefix=echoed, **common)
