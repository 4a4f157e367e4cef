"""Penalties, limits, log-probabilities and echo, through the engine offline (stepped on the test's thread): each
setting changes the tokens the way its definition says, on a prompt built to trigger it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pytest
import torch
from serving import PROMPTS

from conftest import run_cli, write_jsonl
from llmcycle.deploy.serve.engine import Engine
from llmcycle.deploy.serve.jobs import Finished, Job, TextDelta
from llmcycle.deploy.serve.models import load_served
from llmcycle.deploy.serve.protocol import SamplingParams


@pytest.fixture(scope="module")
def engine(llama_dir):
    return Engine(load_served(str(llama_dir), []), max_num_seqs=8)


@dataclass
class Outcome:
    """What one choice of a job produced."""

    text: str = ""
    reason: str | None = None
    completion_tokens: int = 0
    entries: list = field(default_factory=list)  # log-probability entries, in order


def decode(engine: Engine, prompt=PROMPTS[1], **settings) -> Outcome:
    """Greedy decoding of one prompt (text or token ids) with these SamplingParams fields."""
    settings = {"max_tokens": 24, "temperature": 0, **settings}
    ids = engine.served.loaded.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else prompt
    events: list = []
    engine.submit([Job(engine.served.base_name, None, ids, SamplingParams(**settings), events.append)])
    while engine.has_work():
        engine.step()
    outcome = Outcome()
    for event in events:
        if isinstance(event, TextDelta):
            outcome.text += event.text
            outcome.entries += list(getattr(event, "logprobs", ()))
        elif isinstance(event, Finished):
            outcome.reason, outcome.completion_tokens = event.reason, event.completion_tokens
    return outcome


def generated_ids(engine: Engine, **settings) -> list[int]:
    """The token ids behind a greedy answer, read back from the engine's last row history."""
    recorded: list = []
    original = engine._finish

    def record(row, reason):
        recorded.append(row.history[len(row.job.prompt_ids):] if not engine.served.loaded.is_encoder_decoder else row.history[1:])
        original(row, reason)

    engine._finish = record
    try:
        decode(engine, **settings)
    finally:
        engine._finish = original
    return recorded[0]


def test_a_strong_negative_logit_bias_removes_the_greedy_token(engine):
    plain = generated_ids(engine, max_tokens=4)
    biased = generated_ids(engine, max_tokens=4, logit_bias={plain[0]: -100.0})
    assert biased[0] != plain[0] and plain[0] not in biased


def test_frequency_and_presence_penalties_lower_repeats(engine):
    plain = Counter(generated_ids(engine, max_tokens=30))
    frequency = Counter(generated_ids(engine, max_tokens=30, frequency_penalty=2.0))
    presence = Counter(generated_ids(engine, max_tokens=30, presence_penalty=2.0))
    assert max(plain.values()) > max(frequency.values())  # the prompt loops on a tiny random model
    assert len(presence) > len(plain) and max(presence.values()) < max(plain.values())


def test_repetition_penalty_is_what_transformers_applies(engine):
    loaded = engine.served.loaded
    ids = loaded.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = loaded.model.generate(ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.8,
                                         min_new_tokens=12)[0, ids.shape[1]:].tolist()
    assert generated_ids(engine, max_tokens=12, repetition_penalty=1.8, ignore_eos=True) == expected
    assert expected != generated_ids(engine, max_tokens=12, ignore_eos=True)


def test_min_tokens_holds_back_an_early_eos(engine):
    eos = loaded_eos(engine)
    early = decode(engine, logit_bias={eos: 100.0})
    assert early.reason == "stop" and early.completion_tokens == 1
    held = decode(engine, logit_bias={eos: 100.0}, min_tokens=5)
    assert held.reason == "stop" and held.completion_tokens == 6 and held.text


def test_min_tokens_ignores_a_stop_sequence_before_it(engine):
    plain = decode(engine, max_tokens=12)
    stop = plain.text.split()[0]
    assert decode(engine, max_tokens=12, stop=[stop]).completion_tokens < 12
    late = decode(engine, max_tokens=12, stop=[stop], min_tokens=12)
    assert late.reason == "length" and late.text == plain.text


def loaded_eos(engine: Engine) -> int:
    return min(engine.sampler.eos)


def test_the_ngram_block_equals_llmcycle_generate(engine, llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": PROMPTS[2]}])  # a repeated phrase, which the block counts
    capsys.readouterr()
    assert run_cli("generate", "--model", llama_dir, "--data", data, "--max-new-tokens", 24, "--no-repeat-ngram-size", 2) == 0
    expected = json.loads(capsys.readouterr().out.splitlines()[0])["prediction"]
    blocked = decode(engine, PROMPTS[2], no_repeat_ngram_size=2)
    assert blocked.text == expected and blocked.text != decode(engine, PROMPTS[2]).text


def test_logprobs_are_raw_one_per_counted_token_eos_included(engine):
    eos = loaded_eos(engine)
    outcome = decode(engine, logit_bias={eos: 100.0}, min_tokens=3, logprobs=2)
    assert outcome.completion_tokens == len(outcome.entries) == 4
    tokenizer = engine.served.loaded.tokenizer
    assert outcome.entries[-1].token == tokenizer.convert_ids_to_tokens(eos)
    assert all(len(item.top) == 2 and item.top[0][1] >= item.top[1][1] for item in outcome.entries)
    # raw: the bias and the EOS block change the choice, not the log-probabilities, so EOS is not the top token
    assert outcome.entries[-1].logprob < outcome.entries[-1].top[0][1]


def test_generated_logprobs_equal_the_echoed_scores_of_the_same_tokens(engine):
    prompt = engine.served.loaded.tokenizer(PROMPTS[0])["input_ids"]
    generated = generated_ids(engine, prompt=prompt, max_tokens=8)
    live = decode(engine, prompt, max_tokens=8, logprobs=3)
    scored = decode(engine, prompt + generated, max_tokens=0, echo=True, logprobs=3)
    assert scored.completion_tokens == 0 and scored.reason == "length"
    assert len(scored.entries) == len(prompt) + len(generated) and scored.entries[0].logprob is None
    assert scored.entries[0].top is None and all(len(item.top) == 3 for item in scored.entries[1:])
    echoed = scored.entries[len(prompt):]
    assert [item.token for item in echoed] == [item.token for item in live.entries]
    assert [item.logprob for item in echoed] == pytest.approx([item.logprob for item in live.entries], abs=1e-4)


def test_echo_sends_the_prompt_first_then_the_completion_as_it_follows_it(engine):
    """The completion keeps the whitespace that joins it to the prompt ("hello there, so", not "hello there,so"),
    and the tokens spell the echoed text, so that their text offsets index it."""
    plain = decode(engine, max_tokens=6)
    echoed = decode(engine, max_tokens=6, echo=True, logprobs=1)
    assert echoed.text.startswith(PROMPTS[1]) and echoed.completion_tokens == 6
    assert echoed.text[len(PROMPTS[1]):].strip() == plain.text
    spelled = "".join(item.token for item in echoed.entries)
    whole = spelled.find("\ufffd")  # a character split between tokens is spelled half by each: compare up to it
    whole = len(spelled) if whole < 0 else whole
    assert whole > len(PROMPTS[1]) and spelled[:whole] == echoed.text[:whole]


def test_an_echoed_prompt_is_spelled_as_its_text_has_it():
    """A tokenizer that puts a space before every text spells the prompt's first token " Hello"; echoed, it is the
    text's "Hello", and the rest is unchanged."""
    from llmcycle.deploy.serve.logprobs import TokenLogprob, as_in_text

    entries = (TokenLogprob(" Hello", None, None), TokenLogprob(" there", -1.0, ((" there", -1.0),)))
    assert [e.token for e in as_in_text(entries, "Hello there")] == ["Hello", " there"]
    assert as_in_text(entries, " Hello there") == entries and as_in_text((), "x") == ()
    # a completion stripped as generate strips it: whitespace-only tokens first, then the first word's space
    lead = (TokenLogprob("\n", -0.5, None), *entries, TokenLogprob("</s>", -0.1, None))
    assert [e.token for e in as_in_text(lead, "Hello there")] == ["", "Hello", " there", "</s>"]
    assert [e.token for e in as_in_text(lead[:1] + lead[-1:], "")] == ["", "</s>"]
