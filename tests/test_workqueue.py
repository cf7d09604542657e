"""The consumer -> worker hand-off: FIFO, coalescing up to a size, soft capacity, join/clear/close."""

import threading
import time

import pytest

from broker_plugin.workqueue import CoalescingQueue


def test_take_coalesces_waiting_items_in_order_up_to_max_size() -> None:
    q: CoalescingQueue[str] = CoalescingQueue(capacity=100)
    for name, size in (("a", 3), ("b", 4), ("c", 5), ("d", 1)):
        q.put(name, size)
    assert q.size == 13
    assert q.take(max_size=8) == ["a", "b"]  # c would make 12 > 8
    assert q.take(max_size=8) == ["c", "d"]
    assert q.size == 0


def test_an_item_larger_than_max_size_is_taken_alone() -> None:
    q: CoalescingQueue[str] = CoalescingQueue(capacity=10)
    q.put("big", 50)
    q.put("small", 1)
    assert q.full
    assert q.take(max_size=8) == ["big"]
    assert not q.full and q.take(max_size=8) == ["small"]


def test_join_waits_until_every_taken_item_is_done() -> None:
    q: CoalescingQueue[int] = CoalescingQueue(capacity=10)
    q.put(1, 1)
    q.put(2, 1)
    joined = threading.Event()
    threading.Thread(target=lambda: (q.join(), joined.set()), daemon=True).start()
    taken = q.take(max_size=10)
    assert taken == [1, 2]
    time.sleep(0.05)
    assert not joined.is_set()  # taken is not finished
    q.done(len(taken))
    assert joined.wait(5)


def test_clear_drops_waiting_items_and_releases_join() -> None:
    q: CoalescingQueue[int] = CoalescingQueue(capacity=10)
    for i in range(3):
        q.put(i, 1)
    assert q.clear() == 3 and q.size == 0
    q.join()  # returns at once: nothing is unfinished


def test_close_drains_then_take_returns_none_and_wakes_a_blocked_taker() -> None:
    q: CoalescingQueue[int] = CoalescingQueue(capacity=10)
    q.put(7, 1)
    q.close()
    assert q.take(max_size=10) == [7]
    assert q.take(max_size=10) is None
    with pytest.raises(RuntimeError):
        q.put(8, 1)
    other: CoalescingQueue[int] = CoalescingQueue(capacity=10)
    result: list = []
    taker = threading.Thread(target=lambda: result.append(other.take(max_size=10)), daemon=True)
    taker.start()
    time.sleep(0.05)
    other.close()
    taker.join(5)
    assert result == [None]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        CoalescingQueue(0)
