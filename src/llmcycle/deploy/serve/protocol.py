"""Request bodies of the OpenAI completions API and the fields chat shares with it, checked by hand, and the
OpenAI error object. Chat's own fields (messages, how the template renders them) are chat.py's.

Checked here rather than with pydantic models so that every bad value gets OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`, status 400) naming the field, as clients written for the OpenAI
API and vLLM expect, instead of FastAPI's 422 validation list.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ...generate.structured import Constraint

MAX_STOP = 64  # OpenAI allows 4 and vLLM any number; lm-evaluation-harness's local-completions sends a task's every stop
MAX_N = 128
MAX_LOGPROBS = 20  # the most top log-probabilities one token may ask for (vLLM's default --max-logprobs)
UNSUPPORTED = {  # fields whose non-default values this server cannot honour: refused, never silently ignored
    "suffix": (None, ""), "best_of": (None, 1), "use_beam_search": (None, False),
    # vLLM's extra sampling fields that change what comes back
    "stop_token_ids": (None, []), "include_stop_str_in_output": (None, False),
    "min_p": (None, 0), "allowed_token_ids": (None,), "bad_words": (None, []), "prompt_logprobs": (None,),
    "skip_special_tokens": (None, True), "spaces_between_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,), "return_tokens_as_token_ids": (None, False), "return_token_ids": (None, False),
}


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
             503: "service_unavailable"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ToolReply:
    """The reply is a call of function `name`; None: of whichever tool the generated {"name", "arguments"} names."""

    name: str | None


@dataclass(frozen=True)
class Guide:
    """What a request's reply must match (`param`: the field that asked, named in errors) and how it is answered."""

    constraint: Constraint | None
    param: str | None
    tool: ToolReply | None = None
    tools_in_prompt: list | None = None  # tools the chat template renders into the prompt


@dataclass
class SamplingParams:
    """How one request is decoded; temperature 0 is greedy."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says
    constraint: Constraint | None = None  # structured outputs: what every choice must match (guided.py)
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from a token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was generated
    repetition_penalty: float = 1.0  # vLLM's extension, as transformers applies it (prompt and output)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    min_tokens: int = 0  # no EOS or stop sequence before this many tokens
    no_repeat_ngram_size: int = 0  # vLLM-style extra field: transformers' n-gram block (0 = none)
    logprobs: int | None = None  # top log-probabilities per token (None: no log-probabilities at all)
    echo: bool = False  # completions: the prompt (and its log-probabilities) before the completion
    keep_whitespace: bool = False  # the reply follows text echoed before it, so it is not stripped (so with `echo`)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        """Whether any penalty, bias or limit changes the scores (so greedy is more than an argmax)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1 or self.logit_bias
                    or self.min_tokens or self.no_repeat_ngram_size)


@dataclass
class ParsedRequest:
    """A checked completions or chat request: prompts as text or token ids."""

    model: str
    prompts: list  # str or list[int] each
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats: usage in every chunk
    chat: bool = False
    guide: Guide | None = None  # structured outputs or a tool call (guided.py)
    add_special_tokens: bool | None = None  # whether text prompts get the tokenizer's BOS/EOS (None: the route's default)
    reply_prefix: str = ""  # chat's `echo` (vLLM's): the last message, when it is the assistant's, before each reply


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad("body", f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise bad("body", "the request body must be a JSON object")
    return data


def _number(data: dict, name: str, default, low: float, high: float, integer: bool = False, low_open: bool = False):
    value = data.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (isinstance(value, float) and not math.isfinite(value)):
        raise bad(name, f"'{name}' must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise bad(name, f"'{name}' must be in {bracket}{low}, {high}], got {value}")
    return value


def flag(data: dict, name: str, default: bool | None = False) -> bool | None:
    """A true/false field; absent or null is `default`."""
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"'{name}' must be true or false, got {json.dumps(value)}")
    return value


def _stop(data: dict) -> list[str]:
    stop = data.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "'stop' must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP:
        raise bad("stop", f"'stop' takes at most {MAX_STOP} sequences, got {len(stops)}")
    return stops


def _logit_bias(data: dict) -> dict[int, float]:
    bias = data.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise bad("logit_bias", "'logit_bias' must map token ids (as strings) to numbers from -100 to 100")
    checked = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise bad("logit_bias", f"'logit_bias' keys must be token ids such as \"50256\", got {json.dumps(key)}")
        checked[int(key)] = float(_number({"logit_bias": value}, "logit_bias", 0, -100, 100))
    return checked


def _penalties(data: dict) -> dict:
    """The penalty and limit fields of SamplingParams, checked (vLLM's ranges)."""
    return dict(
        presence_penalty=float(_number(data, "presence_penalty", 0.0, -2, 2)),
        frequency_penalty=float(_number(data, "frequency_penalty", 0.0, -2, 2)),
        repetition_penalty=float(_number(data, "repetition_penalty", 1.0, 0, math.inf, low_open=True)),
        logit_bias=_logit_bias(data),
        min_tokens=_number(data, "min_tokens", 0, 0, 1 << 30, integer=True),
        no_repeat_ngram_size=_number(data, "no_repeat_ngram_size", 0, 0, 1 << 30, integer=True),
    )


def sampling_params(data: dict, max_n: int) -> SamplingParams:
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    name = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    top_k = _number(data, "top_k", 0, -1, 1 << 30, integer=True)
    return SamplingParams(
        max_tokens=_number({name: max_tokens}, name, None, 0, 1 << 30, integer=True),
        temperature=float(_number(data, "temperature", 1.0, 0, 2)),
        top_p=float(_number(data, "top_p", 1.0, 0, 1, low_open=True)),
        top_k=max(top_k, 0),
        seed=_number(data, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True),
        n=_number(data, "n", 1, 1, max_n, integer=True),
        stop=_stop(data),
        ignore_eos=flag(data, "ignore_eos"),
        **_penalties(data),
    )


def _completion_logprobs(data: dict) -> int | None:
    """Completions' `logprobs`: how many top log-probabilities each token carries (None: no log-probabilities)."""
    return _number(data, "logprobs", None, 0, MAX_LOGPROBS, integer=True)


def _chat_logprobs(data: dict) -> int | None:
    """Chat's `logprobs: true` with `top_logprobs: N`."""
    top = _number(data, "top_logprobs", None, 0, MAX_LOGPROBS, integer=True)
    if not flag(data, "logprobs"):
        if top is not None:
            raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        return None
    return top or 0


def common_fields(data: dict, max_n: int, chat: bool) -> dict:
    """The fields completions and chat share, as ParsedRequest's keyword arguments."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "'model' is required: one of the names listed by GET /v1/models")
    for name, defaults in UNSUPPORTED.items():
        if data.get(name) not in defaults:
            raise bad(name, f"'{name}' is not supported by this server")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "'stream_options' must be an object such as {\"include_usage\": true}")
    include_usage = flag(options or {}, "include_usage")
    continuous = flag(options or {}, "continuous_usage_stats") and include_usage  # as vLLM: only with include_usage
    params = sampling_params(data, max_n)
    params.logprobs = _chat_logprobs(data) if chat else _completion_logprobs(data)
    params.echo = not chat and flag(data, "echo")  # chat's echo is chat.py's
    if params.max_tokens == 0 and not params.echo:
        raise bad("max_tokens", "'max_tokens' may be 0 only with 'echo' (to score a prompt); otherwise at least 1")
    return {"model": model, "params": params, "stream": flag(data, "stream"), "include_usage": include_usage,
            "continuous_usage": continuous}


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)


def parse_completion(data: dict, max_n: int = MAX_N) -> ParsedRequest:
    common = common_fields(data, max_n, chat=False)
    prompt = data.get("prompt")
    if isinstance(prompt, str) or _is_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise bad("prompt", "'prompt' must be a string, a list of strings, or token ids (a list of integers, or a list of such lists)")
    return ParsedRequest(prompts=prompts, add_special_tokens=flag(data, "add_special_tokens", True), **common)


def context_error(window: int, prompt_tokens: int, max_tokens: int, reserve: bool, param: str) -> APIError:
    """400 for a prompt (plus, for decoder-only models, its completion) beyond the context window."""
    if reserve:
        message = (f"This model's maximum context length is {window} tokens. However, you requested "
                   f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} in the completion). "
                   "Please reduce the length of the prompt or max_tokens.")
    else:
        message = (f"This model's maximum input length is {window} tokens. However, the prompt has {prompt_tokens} tokens. "
                   "Please reduce the length of the prompt.")
    return APIError(400, message, param=param, code="context_length_exceeded")
