"""OpenAI's presence and frequency penalties and its logit bias, as logits processors one row at a time.

transformers has `repetition_penalty` (CTRL's: divide a seen token's positive score), `no_repeat_ngram_size`,
`min_new_tokens` and `sequence_bias`, which the engine takes from it; it has no presence or frequency penalty in
OpenAI's sense, which subtract from the logits of tokens already generated:

    logits[t] -= presence_penalty * (count[t] > 0) + frequency_penalty * count[t]

counting only the generated tokens, not the prompt, as OpenAI and vLLM do.
"""

from __future__ import annotations

import torch


class OpenAIPenalties:
    """presence/frequency penalties and a logit bias for one row; call with that row's (1, vocab) scores."""

    def __init__(self, prompt_length: int, presence: float = 0.0, frequency: float = 0.0, bias: dict[int, float] | None = None):
        self.prompt_length = prompt_length  # history[:prompt_length] is the prompt, not counted
        self.presence, self.frequency = presence, frequency
        self.bias = bias or {}
        self._bias_ids: torch.Tensor | None = None
        self._bias_values: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return bool(self.presence or self.frequency or self.bias)

    def __call__(self, history: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """history: (1, length) ids, prompt then output; scores: (1, vocab), changed in place and returned."""
        generated = history[0, self.prompt_length:]
        if generated.numel() and (self.presence or self.frequency):
            counts = torch.bincount(generated, minlength=scores.shape[-1])[: scores.shape[-1]].to(scores.dtype)
            scores[0] -= self.presence * (counts > 0).to(scores.dtype) + self.frequency * counts
        if self.bias:
            if self._bias_ids is None:
                self._bias_ids = torch.tensor(list(self.bias), dtype=torch.long, device=scores.device)
                self._bias_values = torch.tensor(list(self.bias.values()), dtype=scores.dtype, device=scores.device)
            scores[0, self._bias_ids] += self._bias_values
        return scores


def top_logprobs(logprobs: torch.Tensor, count: int) -> tuple[list[list[float]], list[list[int]]]:
    """The `count` most likely tokens of each row of (rows, vocab) log-probabilities: values and ids, best first."""
    if count <= 0:
        return [[] for _ in range(len(logprobs))], [[] for _ in range(len(logprobs))]
    values, ids = logprobs.topk(min(count, logprobs.shape[-1]), dim=-1)
    return values.tolist(), ids.tolist()
