"""The engine through its public API alone, offline (stepped on the test's thread, no server): typed events,
cancel, adapters added and removed between steps, stats."""

from __future__ import annotations

import pytest
from serving import PROMPTS, make_adapters

from llmcycle.deploy.serve.engine import Engine, EngineStats, QueueFull
from llmcycle.deploy.serve.jobs import Failed, Finished, Job, TextDelta
from llmcycle.deploy.serve.models import load_served
from llmcycle.deploy.serve.protocol import SamplingParams


@pytest.fixture(scope="module")
def served_llama(llama_dir, tmp_path_factory):
    adapters = make_adapters(llama_dir, tmp_path_factory.mktemp("engine-adapters"), False)
    return load_served(str(llama_dir), [("lora1", str(adapters["lora1"]))]), adapters


def job(engine: Engine, name: str, events: list, max_tokens: int = 6, n: int = 1) -> Job:
    tokens = engine.served.loaded.tokenizer(PROMPTS[0])["input_ids"]
    adapter = engine.served.adapter_for(name)
    return Job(name, adapter, tokens, SamplingParams(max_tokens=max_tokens, temperature=0, n=n), events.append)


def run(engine: Engine, steps: int = 100) -> None:
    for _ in range(steps):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError("the engine still has work")


def test_events_are_typed_and_choices_finish_once(served_llama):
    served, _ = served_llama
    engine, events = Engine(served, max_num_seqs=4), []
    engine.submit([job(engine, "lora1", events, n=2)])
    run(engine)
    finished = [event for event in events if isinstance(event, Finished)]
    assert sorted(event.choice for event in finished) == [0, 1]
    assert all(event.reason == "length" and event.completion_tokens == 6 for event in finished)
    texts = ["".join(e.text for e in events if isinstance(e, TextDelta) and e.choice == c) for c in (0, 1)]
    assert texts[0] == texts[1] and texts[0]  # greedy: both choices alike
    assert engine.stats().running_rows == 0 and engine.metrics.value("vllm:generation_tokens_total") == 12
    # vLLM's histograms, as its Grafana dashboard reads them: counts, sums and cumulative buckets ending at the count
    text = engine.metrics.render()
    prompt_tokens = len(engine.served.loaded.tokenizer(PROMPTS[0])["input_ids"])
    expected = {"vllm:inter_token_latency_seconds_count": 10,  # two choices, five gaps each
                "vllm:request_generation_tokens_sum": 12, "vllm:request_generation_tokens_count": 1,
                "vllm:request_prompt_tokens_sum": prompt_tokens, "vllm:request_queue_time_seconds_count": 1}
    for name, value in expected.items():
        assert [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")] == [value], name
    buckets = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_generation_tokens_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == 1 and buckets[3] == 0 and buckets[4] == 1  # 12 lies in (10, 20]


def test_cancel_drops_rows_silently_and_a_full_queue_refuses(served_llama):
    served, _ = served_llama
    engine, events = Engine(served, max_num_seqs=1, max_queued=0), []
    running = job(engine, served.base_name, events, max_tokens=50)
    engine.submit([running])
    engine.step()
    assert engine.stats() == EngineStats(running_requests=1, waiting_requests=0, running_rows=1)
    with pytest.raises(QueueFull):
        engine.submit([job(engine, served.base_name, [])])
    engine.cancel([running])
    seen = len(events)
    run(engine)
    assert len(events) == seen and engine.stats().running_rows == 0


def test_adapters_added_and_removed_between_steps(served_llama):
    served, adapters = served_llama
    engine, events = Engine(served, max_num_seqs=4), []
    added = engine.add_adapter("late", str(adapters["lora2"]))
    engine.step()
    assert added.result(timeout=0).name == "late" and "late" in served.names
    engine.submit([job(engine, "late", events, max_tokens=50)])
    engine.step()
    removed = engine.remove_adapter("late")
    run(engine)
    removed.result(timeout=0)
    failures = [event for event in events if isinstance(event, Failed)]
    assert len(failures) == 1 and failures[0].error.status == 404 and "late" not in served.names
