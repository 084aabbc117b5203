"""Bounded queues between the stages.

A live stream must not fall behind: when a stage is slower than its input, the queue in front of it keeps
the newest items and drops the oldest (``policy="drop_oldest"``), and counts every drop, so latency stays
bounded by the queue length times the stage time. A file read "as fast as the backend goes" must not lose
frames: there the queue blocks the producer instead (``policy="block"``).
"""
from __future__ import annotations

import collections
import threading
import time

__all__ = ["Closed", "BoundedQueue"]


class Closed(Exception):
    """The queue was closed and is empty: the producer has finished."""


class BoundedQueue:
    """A thread-safe FIFO of at most ``maxsize`` items.

    Args:
        maxsize: capacity (>= 1).
        policy: ``"drop_oldest"`` (a full queue discards its oldest item on ``put``) or ``"block"``
            (``put`` waits for room).
        name: for the report.
    """

    def __init__(self, maxsize: int = 1, policy: str = "drop_oldest", name: str = "queue"):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1; got {maxsize}")
        if policy not in ("drop_oldest", "block"):
            raise ValueError(f"policy must be 'drop_oldest' or 'block'; got {policy!r}")
        self.maxsize = int(maxsize)
        self.policy = policy
        self.name = name
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.put_count = 0
        self.dropped = 0
        self.high_water = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item, timeout: float | None = None):
        """Add an item. Returns the item dropped to make room (drop_oldest), else None.

        With ``policy="block"`` waits for room (at most ``timeout`` s; raises ``TimeoutError`` after it).
        Putting into a closed queue discards the item and returns it.
        """
        with self._cond:
            if self._closed:
                return item
            dropped = None
            if len(self._items) >= self.maxsize:
                if self.policy == "drop_oldest":
                    dropped = self._items.popleft()
                    self.dropped += 1
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.maxsize and not self._closed:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise TimeoutError(f"{self.name}: no room after {timeout} s")
                        self._cond.wait(left)
                    if self._closed:
                        return item
            self._items.append(item)
            self.put_count += 1
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float | None = None):
        """Take the oldest item. Raises :class:`Closed` once closed and empty, ``TimeoutError`` after
        ``timeout`` seconds without an item."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    raise Closed(self.name)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(self.name)
                self._cond.wait(left)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; getters drain what is left, then get :class:`Closed`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> list:
        """Remove and return every item (used when stopping)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def stats(self) -> dict:
        return {"policy": self.policy, "maxsize": self.maxsize, "put": self.put_count, "dropped": self.dropped,
                "high_water": self.high_water}
