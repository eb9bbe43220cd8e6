"""A least-recently-used cache bounded in bytes, shared by the threads of a Python worker process.

Keyed models (:class:`sklspark._shipping.ShippedFleet`) and sharded-mode indexes
(:mod:`sklspark.neighbors._shard_index`) are loaded at most once per worker process while they stay
in such a cache; past its bound the least recently used entries are dropped first (the newest always
stays, however large).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any


class BytesLRU:
    """Values by key with their size in bytes, the least recently used dropped first past a bound."""

    def __init__(self) -> None:
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[Hashable]:
        """The keys held, least recently used first."""
        return iter(list(self._items))

    def get(self, key: Hashable, load: Callable[[], tuple[Any, int]], limit: int) -> Any:
        """The value of ``key``; on a miss ``load()`` gives ``(value, nbytes)``, then entries past ``limit`` bytes go.

        Loads run under the cache's lock: two threads asking for the same key load it once.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            value, nbytes = load()
            self._items[key] = (value, nbytes)
            self.nbytes += nbytes
            while self.nbytes > limit and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self.nbytes -= dropped
            return value
