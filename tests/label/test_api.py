"""The page's API through a real uvicorn server on a free port: the flow, tokens, bad bodies, eight labelers at once,
and rows that `llmcycle reward` trains on as they are."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from conftest import run_cli
from labeling import (
    free_port,
    http,
    in_process_server,
    rank_best_first,
    read_rows,
    write_completions,
    write_labelers,
)

from llmcycle.data.preferences import load_pairs

pytestmark = pytest.mark.slow


@pytest.fixture
def anonymous(tmp_path):
    server, store = in_process_server(write_completions(tmp_path / "c.jsonl", 3), tmp_path / "rankings.jsonl")
    yield server.url, tmp_path / "rankings.jsonl"
    server.stop()
    store.close()


def test_one_labeler_ranks_every_item_and_the_rows_feed_reward(anonymous, gpt2_dir, tmp_path):
    url, out = anonymous
    assert http(url + "/api/progress")[1] == {"done": 0, "left": 3, "total": 3, "labeler": "anonymous"}
    seen = []
    while True:
        status, item = http(url + "/api/next")
        if status == 204:
            break
        assert status == 200 and set(item) == {"item", "prompt", "responses"}
        assert http(url + "/api/next")[1] == item  # asked again (a reload): the same item, in the same order
        ranking = [1, 1, 3] if not seen else rank_best_first(item)  # the first one with a tie
        status, answer = http(url + "/api/rank", {"item": item["item"], "ranking": ranking})
        assert status == 200 and answer["duplicate"] is False and answer["done"] == len(seen) + 1
        seen.append((item, ranking))
    assert http(url + "/api/progress")[1]["left"] == 0
    rows = read_rows(out)
    assert [(row["item"], row["responses"], row["ranking"]) for row in rows] == \
           [(item["item"], item["responses"], ranking) for item, ranking in seen]
    assert all(row["labeler"] == "anonymous" and row["prompt"] == item["prompt"] for row, (item, _) in zip(rows, seen))
    assert len(load_pairs(str(out))) == 2 + 3 + 3  # the tie gives no pair
    assert run_cli("reward", "--model", gpt2_dir, "--data", out, "--out", tmp_path / "rm", "--max-steps", "1",
                   "--batch-size", "4", "--max-length", "64") == 0
    assert json.loads((tmp_path / "rm/metrics.json").read_text())["pairs"] == 8
    assert run_cli("align", "--method", "dpo", "--model", gpt2_dir, "--data", out, "--out", tmp_path / "dpo",
                   "--max-steps", "1", "--batch-size", "2") == 0


def test_a_repeat_is_answered_but_written_once(anonymous):
    url, out = anonymous
    item = http(url + "/api/next")[1]
    body = {"item": item["item"], "ranking": [3, 2, 1], "flags": {"unsafe": [False, True, False], "unusable": False}}
    first, second = http(url + "/api/rank", body), http(url + "/api/rank", {**body, "ranking": [1, 2, 3]})
    assert first[0] == second[0] == 200 and (first[1]["duplicate"], second[1]["duplicate"]) == (False, True)
    rows = read_rows(out)
    assert len(rows) == 1 and rows[0]["ranking"] == [3, 2, 1] and rows[0]["flags"]["unsafe"] == [False, True, False]


@pytest.mark.parametrize("body, field, message", [
    ({"item": "nope", "ranking": [1, 2, 3]}, "item", "unknown item"),
    ({"ranking": [1, 2, 3]}, "item", "unknown item"),
    ({"item": "ITEM", "ranking": [1, 2, 2, 4]}, "ranking", "has 4 ranks for 3 responses"),
    ({"item": "ITEM", "ranking": [1, 3, 3]}, "ranking", "is not a ranking"),
    ({"item": "ITEM", "ranking": [2, 2, 2]}, "ranking", "is not a ranking"),
    ({"item": "ITEM", "ranking": "1 2 3"}, "ranking", "whole numbers"),
    ({"item": "ITEM"}, "ranking", "whole numbers"),
    ({"item": "ITEM", "ranking": [1, 2, 3], "flags": {"unsafe": [True]}}, "flags.unsafe", "3 true/false"),
    ({"item": "ITEM", "ranking": [1, 2, 3], "flags": {"evil": 1}}, "flags.evil", "unknown flag"),
    ([1, 2, 3], "body", "JSON object"),
    (b"{not json", "body", "not valid JSON"),
    (b"\xff\xfe", "body", "not valid JSON"),
    (b"[" * 60_000, "body", "not valid JSON"),
    (b"[" * 100_000, "body", "larger than"),
])
def test_a_bad_body_is_a_400_naming_the_field_and_the_server_carries_on(anonymous, body, field, message):
    url, out = anonymous
    item = http(url + "/api/next")[1]
    if isinstance(body, dict):
        body = {key: (item["item"] if value == "ITEM" else value) for key, value in body.items()}
    status, answer = http(url + "/api/rank", raw=body) if isinstance(body, bytes) else http(url + "/api/rank", body)
    assert status == (413 if message == "larger than" else 400)
    assert answer["error"]["field"] == field and message in answer["error"]["message"]
    assert http(url + "/health") == (200, {"status": "ok"})
    assert http(url + "/api/rank", {"item": item["item"], "ranking": [1, 2, 3]})[0] == 200
    assert out.read_text().count("\n") == 1


def test_tokens_own_queues_and_overlap(tmp_path):
    tokens = write_labelers(tmp_path / "labelers.txt", ["ann", "bob", "cy"])
    server, store = in_process_server(write_completions(tmp_path / "c.jsonl", 6), tmp_path / "r.jsonl", tokens, overlap=2)
    try:
        for path in ("/api/next", "/api/progress"):
            assert http(server.url + path)[0] == 401
            assert http(server.url + path, token="wrong")[0] == 401
        assert http(server.url + "/api/rank", {"item": "x", "ranking": [1, 2, 3]}, token="token-ann")[0] == 401
        assert http(server.url + "/")[0] == 200  # the page itself asks for the token
        queues = {name: ranked_all(server.url, token) for name, token in tokens.items()}
        assert {name: len(items) for name, items in queues.items()} == {"ann": 4, "bob": 4, "cy": 4}
        assert set(Counter(item for items in queues.values() for item in items).values()) == {2}
        stolen = queues["bob"][0] if queues["bob"][0] not in queues["ann"] else queues["bob"][-1]
        status, answer = http(server.url + "/api/rank", {"item": stolen, "ranking": [1, 2, 3]}, token=tokens["ann"])
        assert status == 400 and answer["error"]["field"] == "item"
    finally:
        server.stop()
        store.close()
    rows = read_rows(tmp_path / "r.jsonl")
    assert sorted((row["labeler"], row["item"]) for row in rows) == sorted((name, item) for name, items in queues.items() for item in items)


def ranked_all(url: str, token: str) -> list[str]:
    """Rank the labeler's whole queue; returns the item ids in the order served."""
    done = []
    while (answer := http(url + "/api/next", token=token))[0] == 200:
        item = answer[1]
        assert http(url + "/api/rank", {"item": item["item"], "ranking": rank_best_first(item)}, token=token)[0] == 200
        done.append(item["item"])
    assert answer[0] == 204
    return done


def test_eight_labelers_submitting_at_once(tmp_path):
    names = [f"labeler{n}" for n in range(8)]
    tokens = write_labelers(tmp_path / "labelers.txt", names)
    server, store = in_process_server(write_completions(tmp_path / "c.jsonl", 12), tmp_path / "r.jsonl", tokens, overlap=4)
    barrier, served, failures = threading.Barrier(8), {}, []

    def work(name: str) -> None:
        try:
            barrier.wait()
            items = []
            while (answer := http(server.url + "/api/next", token=tokens[name]))[0] == 200:
                body = {"item": answer[1]["item"], "ranking": rank_best_first(answer[1])}
                results = [http(server.url + "/api/rank", body, token=tokens[name]) for _ in range(2)]  # a double click
                assert [status for status, _ in results] == [200, 200]
                items.append(body["item"])
            served[name] = items
        except Exception as exc:  # noqa: BLE001 - reported below, from the main thread
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.stop()
        store.close()
    assert not failures
    rows = read_rows(tmp_path / "r.jsonl")
    assert len(rows) == 12 * 4 == sum(len(items) for items in served.values())
    assert sorted((row["labeler"], row["item"]) for row in rows) == sorted((name, item) for name, items in served.items() for item in items)


def test_a_failing_write_is_a_500_not_an_acknowledgement_and_the_server_carries_on(tmp_path, monkeypatch, capsys):
    server, store = in_process_server(write_completions(tmp_path / "c.jsonl", 2), tmp_path / "r.jsonl")
    try:
        item = http(server.url + "/api/next")[1]
        body = {"item": item["item"], "ranking": [1, 2, 3]}
        with monkeypatch.context() as patch:
            patch.setattr(store, "append", lambda row: (_ for _ in ()).throw(OSError(28, "No space left on device")))
            status, answer = http(server.url + "/api/rank", body)
        assert status == 500 and "not saved" in answer["error"]["message"]
        assert http(server.url + "/api/next")[1]["item"] == item["item"]  # still to do
        assert http(server.url + "/api/rank", body)[0] == 200
    finally:
        server.stop()
        store.close()
    assert [row["item"] for row in read_rows(tmp_path / "r.jsonl")] == [item["item"]]


def test_until_done_the_page_stops_once_every_queue_is_ranked(tmp_path):
    from llmcycle.label.session import LabelRequest, run_label

    port, finished = free_port(), threading.Event()
    request = LabelRequest(str(tmp_path / "r.jsonl"), completions=str(write_completions(tmp_path / "c.jsonl", 2)), port=port)
    worker = threading.Thread(target=lambda: (run_label(request, until_done=True), finished.set()), daemon=True)
    worker.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if http(url + "/health")[0] == 200:
                break
        except OSError:
            threading.Event().wait(0.05)
    ranked_all(url, None)
    assert finished.wait(30), "the page should stop by itself once everything is ranked"
    worker.join(timeout=10)
    run_label(request, until_done=True)  # already complete: returns at once, without serving
    assert len(read_rows(tmp_path / "r.jsonl")) == 2
