"""Prometheus text for `GET /metrics`, under vLLM's metric names where vLLM has one.

Written here rather than with prometheus_client: a dozen metrics scoped to one server (tests run several servers in
one process, where prometheus_client's default registry is process-wide), and the text format is a few lines.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)  # vLLM's 1-2-5
HELP = {  # name: (kind, help, buckets of a histogram); vLLM's names, so its Grafana dashboard reads them
    "vllm:num_requests_running": ("gauge", "Requests in the running batch.", None),
    "vllm:num_requests_waiting": ("gauge", "Requests queued for the running batch.", None),
    "vllm:prompt_tokens_total": ("counter", "Prompt tokens processed.", None),
    "vllm:generation_tokens_total": ("counter", "Tokens generated.", None),
    "vllm:request_success_total": ("counter", "Requests finished, by finish reason.", None),
    "vllm:time_to_first_token_seconds": ("histogram", "Time from arrival to the first generated token.", LATENCY_BUCKETS),
    "vllm:inter_token_latency_seconds": ("histogram", "Time between two tokens of one sequence.", LATENCY_BUCKETS),
    "vllm:request_queue_time_seconds": ("histogram", "Time from arrival to joining the running batch.", LATENCY_BUCKETS),
    "vllm:e2e_request_latency_seconds": ("histogram", "Time from arrival to the last generated token.", LATENCY_BUCKETS),
    "vllm:request_prompt_tokens": ("histogram", "Prompt tokens of a finished request.", TOKEN_BUCKETS),
    "vllm:request_generation_tokens": ("histogram", "Tokens generated for a finished request.", TOKEN_BUCKETS),
    "llmcycle:requests_total": ("counter", "Requests admitted, by served name (base or adapter).", None),
}


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    escaped = (f'{key}="{str(value).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for key, value in labels)
    return "{" + ",".join(escaped) + "}"


class Metrics:
    """Counters, gauges and histograms with labels; `render` gives the exposition text."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.lock = threading.Lock()
        self.values: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self.histograms: dict[str, dict[tuple, list]] = defaultdict(dict)

    def _key(self, labels: dict) -> tuple:
        return tuple(sorted({"model_name": self.model_name, **labels}.items()))

    def add(self, name: str, amount: float = 1.0, **labels) -> None:
        with self.lock:
            self.values[name][self._key(labels)] += amount

    def set(self, name: str, value: float, **labels) -> None:
        with self.lock:
            self.values[name][self._key(labels)] = value

    def observe(self, name: str, value: float, **labels) -> None:
        self.observe_many(name, (value,), **labels)

    def observe_many(self, name: str, values, **labels) -> None:
        """Several observations under one lock (a decoding step's inter-token gaps)."""
        bounds = HELP[name][2]
        with self.lock:
            counts = self.histograms[name].setdefault(self._key(labels), [[0] * (len(bounds) + 1), 0, 0.0])
            for value in values:
                counts[0][bisect.bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value (last: +Inf)
                counts[1] += 1
                counts[2] += value

    def value(self, name: str, **labels) -> float:
        with self.lock:
            return self.values[name].get(self._key(labels), 0.0)

    def render(self) -> str:
        lines = []
        with self.lock:
            for name, (kind, text, _) in HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    lines += self._histogram_lines(name)
                    continue
                series = self.values.get(name) or {self._key({}): 0.0}
                lines += [f"{name}{_labels(key)} {value:g}" for key, value in series.items()]
        return "\n".join(lines) + "\n"

    def _histogram_lines(self, name: str) -> list[str]:
        lines = []
        bounds = HELP[name][2]
        for key, (buckets, count, total) in self.histograms.get(name, {}).items():
            cumulative = 0
            for bound, inside in zip(bounds, buckets):
                cumulative += inside
                lines.append(f"{name}_bucket{_labels(key + (('le', f'{bound:g}'),))} {cumulative}")
            lines.append(f"{name}_bucket{_labels(key + (('le', '+Inf'),))} {count}")
            lines += [f"{name}_count{_labels(key)} {count}", f"{name}_sum{_labels(key)} {total:g}"]
        return lines
