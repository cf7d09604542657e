"""The hand-off between the consumer thread and the pipeline worker: a FIFO bounded by alerts, not items.

The consumer puts one item per poll (a few alerts every ``batch_max_wait_ms`` at a modest rate). The
worker takes *every* waiting item at once, up to ``max_size`` alerts, and processes them as one
micro-batch. So batches grow exactly when the worker falls behind: the per-batch costs (one store
transaction, one inference call, one flush) are spread over more alerts, and a short burst is absorbed
without pausing the input partitions. Pausing is what a full queue leads to, and it is costly: librdkafka
drops its prefetched messages on pause and refetches them only after resume, which stalled the
consumer for 0.4-0.6 s and kept a 300 alerts/s stream in a pause/resume cycle.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class CoalescingQueue(Generic[T]):
    """Thread-safe FIFO of items with sizes; the taker gets several items at once.

    Parameters
    ----------
    capacity
        Total size of waiting items at which :attr:`full` turns true (the producer is expected to stop
        putting; the bound is soft, by at most one item).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[tuple[T, int]] = deque()
        self._size = 0
        self._unfinished = 0  # taken or waiting, not yet marked done
        self._closed = False
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """Total size of the items waiting (not yet taken)."""
        with self._cond:
            return self._size

    @property
    def full(self) -> bool:
        """Whether the waiting items reach the capacity."""
        return self.size >= self.capacity

    def put(self, item: T, size: int) -> None:
        """Append ``item`` of ``size`` (e.g. its number of alerts)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("put on a closed queue")
            self._items.append((item, size))
            self._size += size
            self._unfinished += 1
            self._cond.notify_all()

    def take(self, max_size: int) -> list[T] | None:
        """The oldest items whose sizes add up to at most ``max_size`` (always at least one).

        Blocks while the queue is empty and open; returns ``None`` once it is closed and empty. Each
        item taken must be marked with :meth:`done`.
        """
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None
            out: list[T] = []
            total = 0
            while self._items and (not out or total + self._items[0][1] <= max_size):
                item, size = self._items.popleft()
                out.append(item)
                total += size
            self._size -= total
            self._cond.notify_all()
            return out

    def done(self, count: int) -> None:
        """Mark ``count`` taken items as finished (see :meth:`join`)."""
        with self._cond:
            self._unfinished -= count
            self._cond.notify_all()

    def join(self) -> None:
        """Wait until every item put has been taken and marked done (or dropped by :meth:`clear`)."""
        with self._cond:
            while self._unfinished > 0:
                self._cond.wait()

    def clear(self) -> int:
        """Drop the waiting items (they count as finished); return how many."""
        with self._cond:
            dropped = len(self._items)
            self._items.clear()
            self._size = 0
            self._unfinished -= dropped
            self._cond.notify_all()
            return dropped

    def close(self) -> None:
        """No more puts: :meth:`take` drains what waits, then returns ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
