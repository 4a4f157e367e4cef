"""Prometheus text for `GET /metrics`, under vLLM's metric names where vLLM has one.

Written here rather than with prometheus_client: seven metrics scoped to one server (tests run several servers in
one process, where prometheus_client's default registry is process-wide), and the text format is a few lines.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)
HELP = {
    "vllm:num_requests_running": ("gauge", "Requests in the running batch."),
    "vllm:num_requests_waiting": ("gauge", "Requests queued for the running batch."),
    "vllm:prompt_tokens_total": ("counter", "Prompt tokens processed."),
    "vllm:generation_tokens_total": ("counter", "Tokens generated."),
    "vllm:request_success_total": ("counter", "Requests finished, by finish reason."),
    "vllm:time_to_first_token_seconds": ("histogram", "Time from arrival to the first generated token."),
    "vllm:e2e_request_latency_seconds": ("histogram", "Time from arrival to the last generated token."),
    "llmcycle:requests_total": ("counter", "Requests admitted, by served name (base or adapter)."),
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
        with self.lock:
            counts = self.histograms[name].setdefault(self._key(labels), [[0] * len(LATENCY_BUCKETS), 0, 0.0])
            for index, bound in enumerate(LATENCY_BUCKETS):
                if value <= bound:
                    counts[0][index] += 1
            counts[1] += 1
            counts[2] += value

    def value(self, name: str, **labels) -> float:
        with self.lock:
            return self.values[name].get(self._key(labels), 0.0)

    def render(self) -> str:
        lines = []
        with self.lock:
            for name, (kind, text) in HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    lines += self._histogram_lines(name)
                    continue
                series = self.values.get(name) or {self._key({}): 0.0}
                lines += [f"{name}{_labels(key)} {value:g}" for key, value in series.items()]
        return "\n".join(lines) + "\n"

    def _histogram_lines(self, name: str) -> list[str]:
        lines = []
        for key, (buckets, count, total) in self.histograms.get(name, {}).items():
            for bound, cumulative in zip(LATENCY_BUCKETS, buckets):
                lines.append(f"{name}_bucket{_labels(key + (('le', f'{bound:g}'),))} {cumulative}")
            lines.append(f"{name}_bucket{_labels(key + (('le', '+Inf'),))} {count}")
            lines += [f"{name}_count{_labels(key)} {count}", f"{name}_sum{_labels(key)} {total:g}"]
        return lines
