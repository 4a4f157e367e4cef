"""Log-probabilities a client asks for, in OpenAI's two shapes.

They are the model's raw log-softmax at each position, before temperature, penalties and grammars (vLLM's
default), read once per token. A token's text is what it adds to the text before it (the tokenizer decodes a few
tokens of context with and without it), so a sentencepiece token keeps its leading space; special tokens such as
EOS are spelled as the tokenizer spells them.

Completions (the legacy shape): `{tokens, token_logprobs, top_logprobs, text_offset}`, where each top_logprobs
entry maps token text to log-probability for the N most likely tokens and the chosen one (so up to N + 1, as
OpenAI's legacy API said). Chat: `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`
with exactly the N most likely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...generate.penalties import top_logprobs

FLOOR = -9999.0  # JSON has no -inf; vLLM answers this for a token the model rules out
CONTEXT = 4  # tokens decoded before one, so it is spelled as it reads in the text


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability and the most likely tokens at its position."""

    token: str
    logprob: float | None  # None for a prompt's first token, which nothing predicts
    top: tuple[tuple[str, float], ...] | None  # best first; None where logprob is None


def token_text(tokenizer, context: list[int], token: int) -> str:
    """What `token` adds to the text after `context` (its last few ids)."""
    context = context[-CONTEXT:]
    before = tokenizer.decode(context, skip_special_tokens=False) if context else ""
    after = tokenizer.decode([*context, token], skip_special_tokens=False)
    return after[len(before):] if after.startswith(before) else tokenizer.decode([token], skip_special_tokens=False)


def _floor(value: float) -> float:
    return max(value, FLOOR)


def entry(tokenizer, logprobs: torch.Tensor, context: list[int], token: int, count: int) -> TokenLogprob:
    """The entry of `token` chosen after `context`, from that position's (vocab,) log-probabilities."""
    values, ids = top_logprobs(logprobs.unsqueeze(0), count)
    top = tuple((token_text(tokenizer, context, i), _floor(v)) for v, i in zip(values[0], ids[0]))
    return TokenLogprob(token_text(tokenizer, context, token), _floor(float(logprobs[token])), top)


def raw_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """(rows, vocab) logits -> log-probabilities, in float32 whatever the model's dtype."""
    return torch.log_softmax(logits.float(), dim=-1)


def prompt_entries(tokenizer, scores: torch.Tensor, prompt: list[int], count: int) -> list[TokenLogprob]:
    """The prompt's own entries from (len(prompt) - 1, vocab) log-probabilities, position i predicting token i + 1;
    the first token has none."""
    first = TokenLogprob(token_text(tokenizer, [], prompt[0]), None, None)
    return [first, *(entry(tokenizer, scores[i], prompt[: i + 1], prompt[i + 1], count) for i in range(len(prompt) - 1))]


def as_in_text(entries: tuple[TokenLogprob, ...], text: str) -> tuple[TokenLogprob, ...]:
    """The entries with their first tokens spelled as `text` begins: leading whitespace the text does not have is
    taken off them. A tokenizer that puts a space before every text (sentencepiece's way) spells "Hello" as
    " Hello", and a completion's text is stripped as `llmcycle generate` strips it; without this the text offsets
    of every later token would run past the text by as much."""
    joined = "".join(item.token for item in entries)
    extra = (len(joined) - len(joined.lstrip())) - (len(text) - len(text.lstrip()))
    spelled = list(entries)
    for index, item in enumerate(spelled):
        if extra <= 0:
            break
        token = item.token
        take = min(extra, len(token) - len(token.lstrip()))
        spelled[index] = TokenLogprob(token[take:], item.logprob, item.top)
        extra -= take
        if token[take:]:
            break  # the first token with text in it: whatever whitespace is left is the text's own
    return tuple(spelled)


def completion_json(entries: list[TokenLogprob], offset: int) -> dict:
    """The legacy completions shape; text offsets count from `offset` (the characters before these tokens)."""
    offsets = []
    for item in entries:
        offsets.append(offset)
        offset += len(item.token)
    return {
        "tokens": [item.token for item in entries],
        "token_logprobs": [item.logprob for item in entries],
        "top_logprobs": [_top_dict(item) for item in entries],
        "text_offset": offsets,
    }


def _top_dict(item: TokenLogprob) -> dict | None:
    """Text -> log-probability of the top tokens and the chosen one; where two tokens share a text, the likelier
    one's value stands."""
    if item.top is None:
        return None
    top: dict[str, float] = {}
    for token, value in (*item.top, (item.token, item.logprob)):
        top.setdefault(token, value)
    return top


def _chat_token(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_json(entries: list[TokenLogprob]) -> dict:
    return {"content": [{**_chat_token(item.token, item.logprob),
                         "top_logprobs": [_chat_token(token, value) for token, value in item.top or ()]}
                        for item in entries]}
