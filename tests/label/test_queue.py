"""Labelers, queues with overlap, shuffled orders, and submissions checked field by field."""

from __future__ import annotations

from collections import Counter

import pytest

from llmcycle.errors import UserError
from llmcycle.label.completions import make_item
from llmcycle.label.queue import (
    BadSubmission,
    Labeler,
    Queues,
    assign,
    check_flags,
    check_ranking,
    read_labelers,
    shown_order,
)
from llmcycle.label.store import RankingStore


def items(count: int, k: int = 4) -> list:
    return [make_item(f"prompt {i}", [f"r{i}.{j}" for j in range(k)], ["m"] * k, f"f line {i + 1}") for i in range(count)]


@pytest.mark.parametrize("ranking", [[1, 2, 3, 4], [2, 1, 4, 3], [1, 1, 3, 4], [1, 2, 2, 4], [1, 1, 1, 1], [3, 1, 1, 4]])
def test_rankings_and_ties_as_standard_competition_ranks_are_taken(ranking):
    assert check_ranking(ranking, 4) == ranking


@pytest.mark.parametrize("ranking, message", [
    ([1, 2, 3], "has 3 ranks for 4 responses"),
    ([1, 2, 3, 3, 5], "has 5 ranks"),
    ([0, 1, 2, 3], "is not a ranking"),
    ([1, 1, 2, 3], "is not a ranking"),
    ([1, 2, 2, 3], "is not a ranking"),
    ([1, 2, 4, 5], "is not a ranking"),
    ([1, 2, "3", 4], "whole numbers"),
    ([True, 2, 3, 4], "whole numbers"),
    ("1,2,3,4", "whole numbers"),
    (None, "whole numbers"),
])
def test_a_bad_ranking_names_the_field(ranking, message):
    with pytest.raises(BadSubmission, match=message) as caught:
        check_ranking(ranking, 4)
    assert caught.value.field == "ranking"


def test_flags_are_checked():
    assert check_flags(None, 2) == {"unsafe": [False, False], "unusable": False}
    assert check_flags({"unsafe": [True, False], "unusable": True}, 2) == {"unsafe": [True, False], "unusable": True}
    assert check_flags({"unsafe": [1]}, 2) == {"unsafe": [False, True], "unusable": False}  # positions, as shown
    for flags, field in [([], "flags"), ({"unsafe": [True]}, "flags.unsafe"), ({"unsafe": [2]}, "flags.unsafe"), ({"unsafe": [0, 0]}, "flags.unsafe"),
                         ({"unusable": "yes"}, "flags.unusable"), ({"toxic": True}, "flags.toxic")]:
        with pytest.raises(BadSubmission) as caught:
            check_flags(flags, 2)
        assert caught.value.field == field


def test_overlap_sends_each_item_to_that_many_distinct_labelers_evenly():
    labelers = [Labeler(name, name + "-token") for name in "abcde"]
    queues = assign(items(20), labelers, overlap=3)
    per_item = Counter(item.id for queue in queues.values() for item in queue)
    assert set(per_item.values()) == {3}
    assert all(len({item.id for item in queue}) == len(queue) == 12 for queue in queues.values())
    with pytest.raises(UserError, match="--overlap 6 needs between 1 and 5"):
        assign(items(2), labelers, overlap=6)


def test_each_labeler_sees_a_fixed_order_of_their_own():
    orders = {name: [tuple(shown_order(0, item.id, name, 4)) for item in items(10)] for name in ("a", "b")}
    assert orders["a"] == [tuple(shown_order(0, item.id, "a", 4)) for item in items(10)]  # the same on a reload
    assert orders["a"] != orders["b"]
    assert any(order != (0, 1, 2, 3) for order in orders["a"])
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders["a"] + orders["b"])


@pytest.mark.parametrize("text, message", [
    ("ann t1\nbob\n", "line 2: expected 'name token'"),
    ("ann t1\nann t2\n", "line 2: labeler name 'ann' is given twice"),
    ("# who\nann t1\n\nbob t1\n", "line 4: this token is given to another labeler"),
    ("# nobody\n", "no labelers"),
])
def test_a_bad_labelers_file_names_its_line(tmp_path, text, message):
    path = tmp_path / "labelers.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_labelers(str(path))


def test_a_submission_becomes_a_row_in_the_order_shown(tmp_path):
    with RankingStore(tmp_path / "r.jsonl") as store:
        queues = Queues(items(2), [Labeler("ann", "t1"), Labeler("bob", "t2")], 1, store, seed=3)
        ann = queues.authenticate("Bearer t1")
        assert ann.name == "ann" and queues.authenticate("Bearer t2").name == "bob"
        assert queues.authenticate("Bearer nope") is None and queues.authenticate(None) is None
        shown = queues.next_item(ann)
        row, new = queues.submit(ann, {"item": shown["item"], "ranking": [4, 3, 2, 1]})
        assert new and row["responses"] == shown["responses"] and row["ranking"] == [4, 3, 2, 1]
        item = queues.items[shown["item"]]
        assert [item.responses[i] for i in row["order"]] == shown["responses"]
        assert row["labeler"] == "ann" and row["flags"] == {"unsafe": [False] * 4, "unusable": False}
        assert isinstance(row["seconds"], float)
        assert queues.next_item(ann) is None and queues.progress(ann) == {"done": 1, "left": 0, "total": 1}
        bob_item = queues.next_item(queues.authenticate("Bearer t2"))["item"]
        with pytest.raises(BadSubmission, match="not in ann's queue"):
            queues.submit(ann, {"item": bob_item, "ranking": [1, 2, 3, 4]})
