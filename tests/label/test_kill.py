"""SIGKILL the real server (`python -m llmcycle label`) while a client submits, start it again with the same --out
on the same port, and finish: every acknowledged row is there exactly once, and no line is torn."""

from __future__ import annotations

import threading

import pytest
from labeling import (
    free_port,
    http,
    kill,
    rank_best_first,
    read_rows,
    start_process,
    write_completions,
)

pytestmark = pytest.mark.slow
ITEMS = 12


def submit_until_stopped(url: str, acknowledged: list[str], stop: threading.Event) -> None:
    """Rank the next item again and again, recording each item whose 200 came back, until the server is gone."""
    while not stop.is_set():
        try:
            status, item = http(url + "/api/next")
            if status != 200:
                return
            if http(url + "/api/rank", {"item": item["item"], "ranking": rank_best_first(item)})[0] == 200:
                acknowledged.append(item["item"])
        except OSError:
            return  # the server was killed


def test_sigkill_mid_stream_then_restart_keeps_every_acknowledged_row_once(tmp_path):
    completions = write_completions(tmp_path / "c.jsonl", ITEMS)
    out, log, port = tmp_path / "rankings.jsonl", tmp_path / "server.log", free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("--completions", str(completions), "--out", str(out))
    server = start_process(*args, port=port, log=log)
    acknowledged: list[str] = []
    stop = threading.Event()
    client = threading.Thread(target=submit_until_stopped, args=(url, acknowledged, stop))
    client.start()
    try:
        while len(acknowledged) < 5 and client.is_alive():
            threading.Event().wait(0.005)
        kill(server)  # while the client is mid-request, most likely
    finally:
        stop.set()
        client.join(timeout=30)
    assert len(acknowledged) >= 5

    with out.open("ab") as handle:
        handle.write(b'{"prompt": "a row cut short by the kil')  # what a kill inside write() would leave
    server = start_process(*args, port=port, log=log)  # the same port: nothing of the old server holds it
    try:
        rows = read_rows(out)  # the torn line is gone
        written = [row["item"] for row in rows]
        assert set(acknowledged) <= set(written) and len(written) == len(set(written))
        assert http(url + "/api/progress")[1]["done"] == len(written)
        while (answer := http(url + "/api/next"))[0] == 200:
            assert answer[1]["item"] not in written  # continues at the first unranked item
            assert http(url + "/api/rank", {"item": answer[1]["item"], "ranking": rank_best_first(answer[1])})[0] == 200
    finally:
        kill(server)
    final = [row["item"] for row in read_rows(out)]
    assert len(final) == len(set(final)) == ITEMS and final[: len(written)] == written
    assert "cut a torn final line" in log.read_text()
