import torch

from llmcycle.generate.penalties import OpenAIPenalties, top_logprobs


def test_presence_and_frequency_follow_openais_definition_on_generated_tokens_only():
    history = torch.tensor([[3, 3, 1, 2, 2, 2]])  # prompt [3, 3], then 1 once and 2 three times
    scores = torch.zeros(1, 5)
    OpenAIPenalties(prompt_length=2, presence=0.5, frequency=0.25)(history, scores)
    assert scores.tolist() == [[0.0, -0.75, -1.25, 0.0, 0.0]]  # token 3 is only in the prompt: untouched


def test_logit_bias_adds_to_the_named_tokens():
    scores = torch.zeros(1, 4)
    OpenAIPenalties(prompt_length=1, bias={0: -100.0, 3: 2.5})(torch.tensor([[1]]), scores)
    assert scores.tolist() == [[-100.0, 0.0, 0.0, 2.5]]


def test_top_logprobs_best_first():
    logprobs = torch.log_softmax(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.5, 0.0]]), dim=-1)
    values, ids = top_logprobs(logprobs, 2)
    assert ids == [[1, 2], [0, 1]] and values[0][0] > values[0][1]
    assert top_logprobs(logprobs, 0) == ([[], []], [[], []])
