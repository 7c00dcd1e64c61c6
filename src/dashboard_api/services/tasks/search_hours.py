"""The per-process cache of `q` match counts per hour (services/tasks/search.py): each
filter set's counts and tokens over a contiguous span of hours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.bounded import BoundedCache

HOUR = 3600
# Hours counted again on every request after they were seen changing: the current hour
# of a busy service changes between any two requests, and checking it by its token
# alone would fail the digest every time. Forgotten after this many quiet requests.
_VOLATILE_QUIET = 64
_VOLATILE_KEPT = 48
# An entry holds two small ints per hour with tasks (~0.36 MB at 90 days of tasks, in
# dicts) and the keys of a rare q's matches: 64 entries stay near ~25 MB at most.
CACHE_ENTRIES = 64
# The match keys kept per q at most: all of a q's up to this many, else its newest
# hours' (`HourCounts.trim_keys`).
KEYS_KEPT = 2000
CACHE_KEY = "q_count_cache"

HourKeys = dict[int, list[tuple[datetime, str]]]


@dataclass
class HourCounts:
    """The matches and token of every hour in [lo, hi) (epoch seconds), each taken in
    some snapshot (an hour not listed had neither tasks nor contributions)."""

    rebuilds: int
    lo: int
    hi: int
    tokens: dict[int, int] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    token_sum: int = 0
    count_sum: int = 0
    # hour -> the request (serial) that last saw it change
    volatile: dict[int, int] = field(default_factory=dict)
    serial: int = 0
    # For a rare q: the (created_at, task_id) of every match, per hour with matches,
    # sorted, in every hour of the span from `keys_from` on (None: every hour); then a
    # page in created_at order reads its rows by key. At most `KEYS_KEPT` are held:
    # past that, the newest hours' (`trim_keys`), which the default order's first pages
    # read (a needle as rare as ever has more matches as the table grows).
    keys: dict[int, list[tuple[datetime, str]]] | None = None
    keys_from: int | None = None
    keys_held: int = 0

    def set(
        self, hour: int, token: int, count: int, keys: list[tuple[datetime, str]] | None
    ) -> None:
        """Record an hour's count (and matches) taken with `token`, unless a newer one is
        held (two requests may settle out of order; tokens only grow)."""
        old = self.tokens.get(hour, 0)
        if token < old:
            return
        self.token_sum += token - old
        self.count_sum += count - self.counts.get(hour, 0)
        if token:
            self.tokens[hour] = token
            self.counts[hour] = count
        else:
            self.tokens.pop(hour, None)
            self.counts.pop(hour, None)
        if self.keys is None or (self.keys_from is not None and hour < self.keys_from):
            return
        if keys is None:
            self.keys, self.keys_held = None, 0
            return
        self.keys_held -= len(self.keys.pop(hour, ()))
        if count:
            self.keys[hour] = keys
            self.keys_held += len(keys)

    def trim_keys(self) -> None:
        """Keep the keys of the newest hours holding at most `KEYS_KEPT` matches (none
        when the newest hour alone holds more)."""
        if self.keys is None:
            return
        while self.keys_held > KEYS_KEPT and self.keys:
            oldest = min(self.keys)
            self.keys_held -= len(self.keys.pop(oldest))
            self.keys_from = oldest + HOUR
        if not self.keys and self.keys_from is not None:
            self.keys = None

    def sums(self, a: int, b: int, skip: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """(tokens, counts) summed over the hours in [a, b) outside the `skip` ranges."""
        if a <= self.lo and self.hi <= b:
            tokens, counts = self.token_sum, self.count_sum
        else:
            tokens = counts = 0
            for hour, token in self.tokens.items():
                if a <= hour < b:
                    tokens += token
                    counts += self.counts[hour]
        for s, e in skip:
            for hour in range(max(s, self.lo), min(e, self.hi), HOUR):
                tokens -= self.tokens.get(hour, 0)
                counts -= self.counts.get(hour, 0)
        return tokens, counts


class QCountCache:
    """The `HourCounts` of the most recently used filter sets of one process."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries: BoundedCache[tuple[Any, ...], HourCounts] = BoundedCache(entries)

    def get(self, key: tuple[Any, ...]) -> HourCounts | None:
        return self._entries.get_recent(key)

    def put(self, key: tuple[Any, ...], entry: HourCounts) -> None:
        self._entries.put(key, entry)

    def drop(self, key: tuple[Any, ...]) -> None:
        self._entries.pop(key, None)


def cache_of(session: AsyncSession) -> QCountCache | None:
    """The session's count cache, when its database keeps rollups it can trust."""
    if not session.info.get("analytics_rollups_enabled", True):
        return None
    cache = session.info.get(CACHE_KEY)
    return cache if isinstance(cache, QCountCache) else None


def record_span(
    cache: QCountCache,
    key: tuple[Any, ...],
    span: tuple[int, int],
    rebuilds: int,
    rows: Sequence[Sequence[int]],
    keys: HourKeys | None,
    keys_from: int | None = None,
) -> None:
    """Cache a new span: the counts and tokens of every hour of `span` [a, b), each
    hour's read in one snapshot with its keys (`keys`: those of every hour from
    `keys_from` on)."""
    entry = HourCounts(rebuilds, *span, keys=None if keys is None else {}, keys_from=keys_from)
    for hour, n, t in rows:
        entry.set(hour, t, n, None if keys is None else keys.get(hour, []))
    entry.trim_keys()
    cache.put(key, entry)


def record_hours(
    entry: HourCounts,
    window: tuple[int, int],
    rows: Sequence[Sequence[int]],
    keys: HourKeys | None,
) -> None:
    """Add the hours recounted for a `window` [a, b) to a span (and widen it to it)."""
    for hour, n, t in rows:
        if t != entry.tokens.get(hour, 0) and entry.lo <= hour < entry.hi:
            entry.volatile[hour] = entry.serial
        entry.set(hour, t, n, None if keys is None else keys.get(hour, []))
    entry.lo, entry.hi = min(entry.lo, window[0]), max(entry.hi, window[1])
    entry.trim_keys()
    stale = [h for h, s in entry.volatile.items() if s < entry.serial - _VOLATILE_QUIET]
    for hour in stale:
        del entry.volatile[hour]
    while len(entry.volatile) > _VOLATILE_KEPT:
        del entry.volatile[min(entry.volatile, key=entry.volatile.__getitem__)]
