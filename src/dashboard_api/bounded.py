"""One bounded cache for the process-wide memo tables (tokens, bucket texts, count caches).

A `dict` whose reads are plain dict reads (C speed: the hot paths read far more often than
they write), and whose `put` makes room by dropping the oldest entry. `get_recent` moves a
hit to the newest end, for caches that should keep what is used (least recently used out)
rather than what was stored last (first in, first out).
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V]):
    """At most `max_entries` entries; `put` drops the oldest to make room."""

    __slots__ = ("max_entries",)

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries

    def put(self, key: K, value: V) -> V:
        """Store `value` (newest end) and return it."""
        if key in self:
            del self[key]
        elif len(self) >= self.max_entries:
            del self[next(iter(self))]
        self[key] = value
        return value

    def get_recent(self, key: K) -> V | None:
        """The value (None when absent), now the newest entry: LRU order for `put`."""
        value = self.pop(key, None)
        if value is not None:
            self[key] = value
        return value
