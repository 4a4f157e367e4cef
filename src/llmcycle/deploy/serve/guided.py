"""Structured outputs and tool calls of a request: the fields that hold its reply to a format.

`response_format` (OpenAI), `structured_outputs` with one of `choice`, `regex`, `json`, `grammar` (vLLM's current
API), the older `guided_choice`, `guided_regex`, `guided_json`, `guided_grammar` spellings, and `tools` with a
`tool_choice` that forces a call all become one Constraint (generate/structured.py), enforced token by token on
every choice of the request (sampler.py). At most one may be given.

A forced tool call generates the function's arguments under its `parameters` schema. With `"required"` and several
tools the reply is `{"name": ..., "arguments": ...}` under a schema that is anyOf over the tools (name as a
const), so the name and its arguments come from one grammar and the reply needs no second pass. `"auto"` is
refused unless the model's chat template renders tools: a model not trained to call tools cannot decide when to.
"""

from __future__ import annotations

import json
import uuid

from ...generate import structured
from ...generate.structured import Constraint, ConstraintError, Grammars
from .jobs import TextDelta
from .protocol import Guide, ToolReply, bad

KINDS = ("choice", "regex", "json", "grammar")
LEGACY = {f"guided_{kind}": kind for kind in KINDS}  # vLLM's older spellings
COMPACT = (",", ":")


def template_has_tools(tokenizer) -> bool:
    """Whether the model's chat template renders tools (then it was presumably trained to call them)."""
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and "tools" in str(template)


def parse_guide(data: dict, chat: bool, tool_template: bool = False) -> Guide | None:
    """The request's single constraint (400 naming the fields when there are several), or None."""
    builders = [*_format_builders(data), *_tool_builders(data, chat, tool_template)]
    asked = [param for param, _ in builders]
    if len(asked) > 1:
        raise bad(asked[1], f"only one structured output constraint may be given, got {', '.join(asked)}")
    auto = _auto_tools(data, tool_template) if chat else None
    if not builders:
        return auto
    param, build = builders[0]
    try:
        guide = build()
    except ConstraintError as exc:
        raise bad(param, f"'{param}': {exc}") from None
    return guide


def check_guide(guide: Guide | None, grammars: Grammars) -> None:
    """400 naming the field when the engine cannot enforce the constraint on this model's vocabulary."""
    if guide is None or guide.constraint is None:
        return
    try:
        grammars.check(guide.constraint)
    except ConstraintError as exc:
        raise bad(guide.param, f"'{guide.param}': {exc}") from None


# ---- response_format, structured_outputs, guided_* ----

def _format_builders(data: dict) -> list[tuple]:
    """(field, build) for each constraint the request gives; `build()` returns its Guide."""
    builders = []
    response_format = _response_format(data.get("response_format"))
    if response_format is not None:
        builders.append(("response_format", lambda: Guide(response_format(), "response_format")))
    if data.get("structured_outputs") is not None:
        builders += _structured_outputs(data["structured_outputs"])
    builders += [(name, _builder(kind, data[name], name)) for name, kind in LEGACY.items() if data.get(name) is not None]
    return builders


def _structured_outputs(options) -> list[tuple]:
    """vLLM's `structured_outputs`: one of choice, regex, json, grammar (or json_object: true)."""
    needs = "'structured_outputs' must be an object with one of " + ", ".join(KINDS)
    if not isinstance(options, dict):
        raise bad("structured_outputs", needs)
    if options.get("structural_tag") is not None:
        raise bad("structured_outputs.structural_tag", "'structured_outputs.structural_tag' is not supported by this server")
    builders = [(f"structured_outputs.{kind}", _builder(kind, options[kind], f"structured_outputs.{kind}"))
                for kind in KINDS if options.get(kind) is not None]
    if options.get("json_object"):
        builders.append(("structured_outputs.json_object", lambda: Guide(structured.json_object(), "structured_outputs.json_object")))
    if not builders:
        raise bad("structured_outputs", needs)
    return builders


def _builder(kind: str, value, param: str):
    build = {"choice": structured.choice, "regex": structured.regex, "json": _json_constraint, "grammar": structured.grammar}[kind]
    return lambda: Guide(build(value), param)


def _json_constraint(schema) -> Constraint:
    """A schema given as an object (or boolean), or as a JSON string of one, as vLLM takes `json`."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ConstraintError(f"the schema is not valid JSON: {exc}") from None
    return structured.json_schema(schema)


def _response_format(value):
    """A function building the constraint `response_format` asks for, or None for plain text."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return structured.json_object
    if kind != "json_schema":
        raise bad("response_format", "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                                     "{\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\"}}")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise bad("response_format.json_schema", "'response_format.json_schema' must be an object with a 'name' and a 'schema'")
    schema = spec.get("schema")
    return structured.json_object if schema is None else (lambda: structured.json_schema(schema))


# ---- tools ----

def _tool_builders(data: dict, chat: bool, tool_template: bool) -> list[tuple]:
    """(field, build) when the request forces a tool call; [] when it does not."""
    tools, choice = data.get("tools"), data.get("tool_choice")
    if not chat:
        if tools is not None or choice is not None:
            raise bad("tools" if tools is not None else "tool_choice", "'tools' and 'tool_choice' belong to /v1/chat/completions")
        return []
    functions = _functions(tools)
    if choice is not None and not functions:
        raise bad("tool_choice", "'tool_choice' is only allowed when 'tools' are given")
    if choice in (None, "auto", "none"):
        return []
    in_prompt = tools if tool_template else None
    if choice == "required":
        return [("tool_choice", lambda: _required(functions, in_prompt))]
    name = _named_function(choice)
    if name not in functions:
        raise bad("tool_choice", f"'tool_choice' names the function '{name}', which is not among the tools: {', '.join(functions)}")
    param = f"tools[{list(functions).index(name)}].function.parameters"
    return [(param, lambda: Guide(structured.json_schema(functions[name]), param, ToolReply(name), in_prompt))]


def _named_function(choice) -> str:
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                                 "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    return function["name"]


def _functions(tools) -> dict:
    """{name: parameters schema} of the request's tools, checked."""
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise bad("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects")
    functions = {}
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise bad(f"tools[{index}]", f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": ...}}}}")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise bad(f"tools[{index}].function.parameters", "a function's 'parameters' must be a JSON schema object")
        functions[function["name"]] = parameters if parameters is not None else {"type": "object", "properties": {}}
    return functions


def _required(functions: dict, in_prompt: list | None) -> Guide:
    """A call of one of the tools; with one tool, just its arguments."""
    if len(functions) == 1:
        name, parameters = next(iter(functions.items()))
        return Guide(structured.json_schema(parameters), "tools[0].function.parameters", ToolReply(name), in_prompt)
    calls = [{"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
              "required": ["name", "arguments"], "additionalProperties": False} for name, parameters in functions.items()]
    return Guide(structured.json_schema({"anyOf": calls}), "tools", ToolReply(None), in_prompt)


def _auto_tools(data: dict, tool_template: bool) -> Guide | None:
    """Tools left to the model ("auto", or no tool_choice): the template renders them and the reply is free text;
    400 for a model whose template has no tools. With "none" a template that renders tools still gets them (as vLLM
    renders them), and the reply is text."""
    if not _functions(data.get("tools")):
        return None
    if data.get("tool_choice") == "none":
        return Guide(None, None, None, data["tools"]) if tool_template else None
    if data.get("tool_choice") not in (None, "auto"):
        return None
    if not tool_template:
        raise bad("tool_choice", "tool_choice 'auto' is not supported: this model's chat template has no tools, so it "
                                 "was not trained to decide when to call one; name the function "
                                 "({\"type\": \"function\", \"function\": {\"name\": ...}}) or send \"required\"")
    return Guide(None, None, None, data["tools"])


# ---- answers ----

def tool_call(tool: ToolReply, text: str, complete: bool = True) -> dict | None:
    """OpenAI's tool call for a reply. A complete reply is parsed and its arguments written compactly; one cut by
    max_tokens keeps its arguments as far as they got, as OpenAI and vLLM return a forced call cut short. None where
    no call can be named: a cut reply under "required" with several tools may not have named its function yet."""
    if not complete:
        if tool.name is None:
            return None
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": tool.name, "arguments": text}}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    name, arguments = (tool.name, value) if tool.name is not None else (value.get("name"), value.get("arguments"))
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, separators=COMPACT, ensure_ascii=False)}}


def _finish(finish: str | None) -> str | None:
    """A call's finish reason: "tool_calls" once it is whole (as the issue and OpenAI's "required" have it), else
    what cut it ("length")."""
    return "tool_calls" if finish == "stop" else finish


def tool_message(tool: ToolReply, index: int, text: str, finish: str | None) -> dict | None:
    """A chat choice whose message holds the tool call; None when none can be named (answered as plain text)."""
    call = tool_call(tool, text, complete=finish == "stop")
    if call is None:
        return None
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": _finish(finish)}


def tool_chunks(tool: ToolReply, index: int, text: str, finish: str | None) -> list[dict]:
    """A streamed choice's chunks once it finished: its whole call in one `tool_calls` delta, then the finish."""
    call = tool_call(tool, text, complete=finish == "stop")
    if call is None:
        return [{"index": index, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": finish}]
    delta = {"tool_calls": [{"index": 0, **call}]}
    return [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None},
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": _finish(finish)}]


def tool_replies(parsed, choices: list[dict], texts: list[str], reasons: list) -> None:
    """Turn the answer's finished choices into tool calls, in place, when the request forced one."""
    tool = parsed.guide.tool if parsed.guide is not None else None
    if tool is None:
        return
    for index, (text, reason) in enumerate(zip(texts, reasons)):
        call = tool_message(tool, index, text, reason)
        if call is not None:
            choices[index] = {**choices[index], **call}


class ToolStream:
    """Holds a streamed tool call's text until its choice finishes (arguments are one JSON value, sent whole)."""

    def __init__(self, tool: ToolReply):
        self.tool, self.texts = tool, {}

    def push(self, index: int, event) -> list[dict]:
        """The chunks' choices to send for this event (none until the choice finishes)."""
        if isinstance(event, TextDelta):
            self.texts[index] = self.texts.get(index, "") + event.text
            return []
        return tool_chunks(self.tool, index, self.texts.pop(index, ""), event.reason)


def tool_stream(parsed) -> ToolStream | None:
    tool = parsed.guide.tool if parsed.guide is not None else None
    return ToolStream(tool) if tool is not None else None


def attach(parsed, guide: Guide | None):
    """The parsed request with its guide, and every choice held to the guide's constraint."""
    if parsed.reply_prefix and guide is not None and guide.tool is not None:
        raise bad("echo", "'echo' cannot go with a forced tool call: its reply is the call, not text to continue")
    parsed.guide = guide
    parsed.params.constraint = guide.constraint if guide is not None else None
    return parsed
