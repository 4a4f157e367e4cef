"""The rankings file: rows appended whole and durably, read back on restart, a torn last line cut, repeats refused."""

from __future__ import annotations

import json
import threading

import pytest

from llmcycle.errors import UserError
from llmcycle.label.store import RankingStore


def row(item: str, labeler: str = "ann", rank: int = 1) -> dict:
    return {"prompt": "p", "responses": ["a", "b"], "ranking": [rank, 3 - rank], "item": item, "labeler": labeler}


def test_rows_survive_a_reopen_and_a_repeat_is_not_written(tmp_path):
    path = tmp_path / "rankings.jsonl"
    with RankingStore(path) as store:
        assert store.append(row("i1")) == (row("i1"), True)
        assert store.append(row("i1", rank=2)) == (row("i1"), False)  # a retry, even a changed one, keeps the first
        store.append(row("i1", labeler="bob"))
    with RankingStore(path) as store:
        assert set(store.rows) == {("i1", "ann"), ("i1", "bob")}
        assert store.done("i1", "ann") and not store.done("i2", "ann")
        assert store.append(row("i1"))[1] is False
    assert len(path.read_text().splitlines()) == 2


@pytest.mark.parametrize("tail", [b'{"prompt": "p", "resp', b'{"item": "i9", "labeler": "ann"}', b"\x00\x00\x00"])
def test_a_torn_final_line_is_cut_and_the_next_row_starts_a_line(tmp_path, tail):
    path = tmp_path / "rankings.jsonl"
    path.write_bytes((json.dumps(row("i1")) + "\n").encode() + tail)  # a final line without its newline: never acknowledged
    with RankingStore(path) as store:
        assert list(store.rows) == [("i1", "ann")]
        store.append(row("i2"))
    lines = path.read_text().splitlines(keepends=True)
    assert [json.loads(line)["item"] for line in lines] == ["i1", "i2"]
    assert all(line.endswith("\n") for line in lines)


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "rankings.jsonl"
    path.write_text(json.dumps(row("i1")) + "\nnot json\n" + json.dumps(row("i2")) + "\n")
    with pytest.raises(UserError, match=r"rankings.jsonl line 2: not valid JSON"):
        RankingStore(path).open()


def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    path = tmp_path / "rankings.jsonl"
    with RankingStore(path), pytest.raises(UserError, match="in use by another llmcycle label"):
        RankingStore(path).open()
    RankingStore(path).open().close()  # free again once the first one closed


def test_eight_writers_at_once_each_get_whole_lines(tmp_path):
    path = tmp_path / "rankings.jsonl"
    barrier = threading.Barrier(8)
    with RankingStore(path) as store:
        def write(labeler: str) -> None:
            barrier.wait()
            for index in range(25):
                store.append(row(f"i{index}", labeler))
                store.append(row(f"i{index}", labeler))  # a double click

        threads = [threading.Thread(target=write, args=(f"labeler{n}",)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    keys = [(r["item"], r["labeler"]) for r in map(json.loads, path.read_text().splitlines())]
    assert len(keys) == 8 * 25 and len(set(keys)) == len(keys)
