"""The commit rule crash recovery rests on, tested as rules (services/workers/commit_order.py):
never past the oldest unfinished request, on past it once finished, past a poison event,
revoked partitions forgotten."""

from __future__ import annotations

import pytest

from services.workers.commit_order import CommitOrder

pytestmark = pytest.mark.unit


def consume(order: CommitOrder, partition: int, offsets) -> None:
    for offset in offsets:
        order.consumed(partition, offset)


def test_everything_consumed_when_nothing_is_unfinished():
    order = CommitOrder()
    consume(order, 0, range(5))
    consume(order, 1, range(2))
    assert order.due() == {0: 5, 1: 2}
    order.committed(order.due())
    assert order.due() == {}, "an unchanged position is not committed again"


def test_never_past_the_oldest_unfinished_request():
    order = CommitOrder()
    consume(order, 0, range(3))
    order.unfinished("a", 0, 3)
    consume(order, 0, [3, 4])
    order.unfinished("b", 0, 5)
    consume(order, 0, range(5, 9))
    assert order.due() == {0: 3}
    order.committed({0: 3})
    order.finished("b")  # a later one finishing first changes nothing
    assert order.due() == {}
    order.finished("a")
    assert order.due() == {0: 9}
    assert order.behind_commit(0, 3) is False
    order.committed({0: 9})
    assert order.behind_commit(0, 3) and order.behind_commit(0, 8)
    assert not order.behind_commit(0, 9)


def test_partitions_are_independent():
    order = CommitOrder()
    order.unfinished("a", 0, 0)
    consume(order, 0, range(4))
    consume(order, 1, range(4))
    assert order.due() == {0: 0, 1: 4}


def test_a_poison_event_is_passed():
    """A parked event is consumed like any other: the commit moves past it."""
    order = CommitOrder()
    consume(order, 2, [0, 1])  # offset 1 was undecodable and parked in the DLQ
    assert order.due() == {2: 2}


def test_revoked_partitions_are_forgotten():
    order = CommitOrder()
    order.unfinished("a", 0, 1)
    consume(order, 0, range(3))
    consume(order, 1, range(3))
    order.committed(order.due())
    assert order.partitions() == {0, 1}
    order.drop({0})
    assert order.partitions() == {1}
    assert order.due() == {}
    # Assigned again later: nothing of before is assumed, nor the old unfinished request.
    consume(order, 0, [7])
    assert order.due() == {0: 8}
