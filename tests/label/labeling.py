"""What the label tests share: a completions file, a free port, a small HTTP client, and servers started in this
process (a thread) or as a real `python -m llmcycle label` process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from llmcycle.deploy.serve.listening import bind
from llmcycle.label.app import LabelServer
from llmcycle.label.completions import read_completions
from llmcycle.label.queue import ANONYMOUS, Labeler, Queues
from llmcycle.label.store import RankingStore

HOSTILE = ["<script>window.__pwned = 1</script>", "<img src=x onerror=\"window.__pwned = 2\">"]


def completion_rows(count: int, k: int = 3) -> list[dict]:
    """`count` prompts with k distinct responses each; the first carries the hostile texts."""
    rows = []
    for index in range(count):
        responses = [f"answer {index}.{slot}" for slot in range(k)]
        if index == 0:
            responses[: len(HOSTILE)] = HOSTILE
        rows.append({"prompt": f"Question {index}: what now? <b>bold?</b>", "responses": responses})
    return rows


def write_completions(path: Path, count: int, k: int = 3) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in completion_rows(count, k)))
    return path


def write_labelers(path: Path, names: list[str]) -> dict[str, str]:
    tokens = {name: f"token-{name}-{index}x" for index, name in enumerate(names)}
    path.write_text("".join(f"{name} {token}\n" for name, token in tokens.items()))
    return tokens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body: object | None = None, token: str | None = None, raw: bytes | None = None) -> tuple[int, object]:
    """(status, parsed JSON, the text when it is not JSON, or None when empty) of a GET, or a POST of `body` as JSON
    (or `raw` bytes)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return status, (json.loads(payload) if payload else None)
    except ValueError:
        return status, payload.decode()


def rank_best_first(item: dict) -> list[int]:
    """A ranking that prefers shorter responses (ties broken by position), as a deterministic labeler."""
    order = sorted(range(len(item["responses"])), key=lambda i: (len(item["responses"][i]), i))
    ranking = [0] * len(order)
    for rank, index in enumerate(order, start=1):
        ranking[index] = rank
    return ranking


def in_process_server(completions: Path, out: Path, labelers: dict[str, str] | None = None, overlap: int = 1):
    """(server, store) serving `completions` on a free port in a thread; the caller stops both."""
    people = [Labeler(name, token) for name, token in labelers.items()] if labelers else [Labeler(ANONYMOUS, None)]
    store = RankingStore(out).open()
    queues = Queues(read_completions(str(completions), None), people, overlap, store)
    return LabelServer(queues, bind("127.0.0.1", 0)).start(), store


def start_process(*args: str, port: int, log: Path) -> subprocess.Popen:
    """`python -m llmcycle label ARGS --port PORT` in its own process; returns once /health answers."""
    command = [sys.executable, "-m", "llmcycle", "label", *args, "--port", str(port)]
    handle = log.open("ab")
    process = subprocess.Popen(command, stdout=handle, stderr=handle, env={**os.environ, "LLMCYCLE_DEBUG": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if http(f"http://127.0.0.1:{port}/health")[0] == 200:
                return process
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the server did not start: {log.read_text()[-2000:]}")


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def read_rows(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "a torn final line"
    return [json.loads(line) for line in text.splitlines()]
