"""Exact totals of `q` task lists from per-hour match counts cached in each process.

A common substring matches ~15 % of the tasks, and counting them rechecks every match
(280 ms at 1M tasks). Which tasks of an hour match `q` (with status, agent_type, source)
changes only when a task of that hour is registered or changes status: `input_message`,
`agent_type`, `source` and `created_at` never change, and tasks are deleted only by
retention. Every such write records its contributions in `analytics_pending` in its own
transaction, and the fold moves them into the rollups atomically while adding their
number to the block's `changes`. So an hour's token

    (rollup rebuilds + prune batches, changes of its overall 1-hour rollup row + its pending rows)

grows with every write that can change what the hour holds, a fold leaves it as it is,
and a rebuild (which resets `changes`) or a prune batch (which deletes tasks without a
contribution, services/retention.py) bumps the first part. A count taken together
with its token stays exact for as long as a later read sees the same token.

Each process keeps, per (q, status, agent_type, source), the count and token of every
hour of a contiguous span (`HourCounts`). A request runs ONE statement: its page, the
raw count of the partial hours at its window's edges, the hours it has no trusted count
for (outside the span, or seen changing lately) counted per hour with their tokens, and
the sum of the tokens of every hour in the window (`digest`). Tokens only grow, so that
sum equals the sum of the tokens the counts were taken with exactly when no hour taken
from the cache has changed: then the total is exact in the page's own snapshot. When it
differs, the hours' tokens are read, the changed hours are counted again, and the
statement runs again (a few times at most, then a plain count).

More than `_FEW_HOURS` hours to count (the first request of a q, a window reaching far
past the span, many hours changed at once) are counted first in a statement of their
own (`fill`): one scan of the matches, grouped per hour, with the hours' tokens and the
rebuild count in the same snapshot, so exact without a digest. The page's statement
then finds them cached like any warm request's, and the count has told the page's plan
whether q is common. A first request so costs about one plain count of q (a page, the
counts and a rare q's keys each scanned the matches before).

Per process and per database (the cache lives on the app's session factory): replicas
each keep their own, and all stay exact because the tokens live in the database.
Not used when the rollups are off (`analytics_rollups_enabled`): writes then record no
contributions. Every replica writing tasks must run a release that counts `changes`
in its fold (0010 and later), or tokens could fall back to an earlier value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    and_,
    false,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.bounded import BoundedCache
from dashboard_api.db.dialect import dialect_of, int_rows
from dashboard_api.db.models import Task
from dashboard_api.db.models.analytics import AnalyticsPending, AnalyticsRollup, AnalyticsState
from dashboard_api.services.analytics.layout import EPOCH, GRAINS, SERIES_MARGINAL
from dashboard_api.timeutil import merge_ranges, to_utc

HOUR = 3600
# The bounds of an open window: whole hours that every stored instant lies between.
_LOW_S = (datetime(1, 1, 2, tzinfo=UTC) - EPOCH) // timedelta(seconds=1)
_HIGH_S = (datetime(9999, 12, 30, tzinfo=UTC) - EPOCH) // timedelta(seconds=1)
# Hours counted again on every request after they were seen changing: the current hour
# of a busy service changes between any two requests, and checking it by its token
# alone would fail the digest every time. Forgotten after this many quiet requests.
_VOLATILE_QUIET = 64
_VOLATILE_KEPT = 48
# An entry holds two small ints per hour with tasks (~0.36 MB at 90 days of tasks, in
# dicts) and the keys of a rare q's matches: 64 entries stay near ~25 MB at most.
CACHE_ENTRIES = 64
# A q with at most this many matches (in the span first counted) keeps their keys.
KEYS_KEPT = 2000
_FEW_HOURS = 48
CACHE_KEY = "q_count_cache"

_T = Task.__table__
_R = AnalyticsRollup.__table__.c
_P: Table = AnalyticsPending.__table__  # type: ignore[assignment]
_S: Table = AnalyticsState.__table__  # type: ignore[assignment]


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
    # sorted; then a page in created_at order reads its rows by key.
    keys: dict[int, list[tuple[datetime, str]]] | None = None

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
        if self.keys is not None:
            if keys is None:
                self.keys = None
            elif count:
                self.keys[hour] = keys
            else:
                self.keys.pop(hour, None)

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


def _ts(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def _hour_floor(at: datetime) -> int:
    return (to_utc(at) - EPOCH) // timedelta(seconds=1) // HOUR * HOUR


def _hour_ceil(at: datetime) -> int:
    micros = (to_utc(at) - EPOCH) // timedelta(microseconds=1)
    return -(-micros // (HOUR * 1_000_000)) * HOUR


@dataclass
class QTotal:
    """What one attempt adds to the page statement, and how to read its answer."""

    key: tuple[Any, ...]
    entry: HourCounts | None  # None: a fresh span [a, b)
    a: int
    b: int
    recount: list[tuple[int, int]]
    known_tokens: int
    known_count: int
    edges: ColumnElement[Any]  # the raw count of the partial hours at the window's edges
    edge_ranges: list[tuple[datetime, datetime]]
    keys: bool  # whether the recounted hours' matches are read too
    extras: list[ColumnElement[Any]]  # rebuilds, digest, recounted hours (, their matches)
    fill: bool = False  # count the recounted hours with `fill` first (no extras then)


def plan(
    session: AsyncSession,
    cache: QCountCache,
    key: tuple[Any, ...],
    plain: tuple[Sequence[ColumnElement[bool]], Sequence[ColumnElement[bool]]],
    lo: datetime | None,
    hi: datetime | None,
    changed: Sequence[int] = (),
    *,
    rare: bool = True,
    fill: bool = False,
) -> QTotal | None:
    """The total's part of the page statement for a window [lo, hi) and the other
    filters' clauses `plain` (q included; as they are, and with q kept off its index);
    None when the window holds no whole hour.
    `changed`: hours a token read found changed (counted again). `rare`: a new span reads
    the keys of the matches too (kept when there are at most `KEYS_KEPT`). `fill`: when
    more than a few hours are to be counted, answer a `QTotal` marked `fill` (and no
    extras): count them with `fill` first, then plan again."""
    a = _LOW_S if lo is None else _hour_ceil(lo)
    b = _HIGH_S if hi is None else _hour_floor(hi)
    if a >= b:
        return None
    edge_ranges = []
    if lo is not None and lo < _ts(a):
        edge_ranges.append((lo, _ts(a)))
    if hi is not None and _ts(b) < hi:
        edge_ranges.append((_ts(b), hi))
    edges = [and_(_T.c.created_at >= s, _T.c.created_at < e) for s, e in edge_ranges]
    entry = cache.get(key)
    if entry is not None and (entry.hi < a or b < entry.lo):
        entry = None  # a span elsewhere: start a new one here
    if entry is None:
        recount = [(a, b)]
        known_tokens = known_count = 0
    else:
        for hour in changed:
            entry.volatile[hour] = entry.serial
        hot = [(h, h + HOUR) for h in entry.volatile if a <= h < b]
        outside = [(a, min(b, entry.lo)), (max(a, entry.hi), b)]
        recount = merge_ranges([(s, e) for s, e in outside if s < e] + hot)
        inside = [(s, e) for s, e in recount if s < entry.hi and entry.lo < e]
        known_tokens, known_count = entry.sums(a, b, inside)
    indexed, scan = plain
    edge_count: ColumnElement[Any] = literal(0, BigInteger)
    if edges:
        edge_count = (
            select(func.count()).select_from(_T).where(or_(*edges), *scan).scalar_subquery()
        )
    # A few hours: read their rows by time; more: let the planner use q's index.
    few = sum(e - s for s, e in recount) <= _FEW_HOURS * HOUR
    which = scan if few else indexed
    keys = rare if entry is None else entry.keys is not None
    extras: list[ColumnElement[Any]] = []
    if fill and not few:
        return QTotal(
            key, entry, a, b, recount, known_tokens, known_count, edge_count, edge_ranges, keys,
            extras, fill=True,
        )  # fmt: skip
    extras += [_rebuilds(), _digest(a, b), _recounted(session, which, recount)]
    if keys:
        extras.append(_recounted_keys(session, which, recount))
    return QTotal(
        key, entry, a, b, recount, known_tokens, known_count, edge_count, edge_ranges, keys, extras
    )


def settle(cache: QCountCache, q: QTotal, edges: int, extras: Sequence[Any]) -> int | None:
    """The exact total, with the cache brought up to date; None when an hour taken from
    the cache changed (or the rollups were rebuilt): read the tokens and plan again."""
    rebuilds, digest, rows = int(extras[0]), int(extras[1]), int_rows(extras[2])
    entry = q.entry
    if entry is not None and entry.rebuilds != rebuilds:
        cache.drop(q.key)
        return None
    if digest != q.known_tokens + sum(t for _, _, t in rows):
        return None
    total = edges + q.known_count + sum(n for _, n, _ in rows)
    keys = _keys_by_hour(extras[3]) if q.keys else None
    if entry is None:
        _record_span(cache, q, rebuilds, rows, keys)
        return total
    entry.serial += 1
    _record_hours(entry, q, rows, keys)
    return total


def _record_span(
    cache: QCountCache,
    q: QTotal,
    rebuilds: int,
    rows: Sequence[Sequence[int]],
    keys: dict[int, list[tuple[datetime, str]]] | None,
) -> None:
    """Cache a new span: the counts and tokens of every hour of [q.a, q.b), all read in
    one snapshot."""
    entry = HourCounts(rebuilds, q.a, q.b, keys=None if keys is None else {})
    for hour, n, t in rows:
        entry.set(hour, t, n, None if keys is None else keys.get(hour, []))
    cache.put(q.key, entry)


def _record_hours(
    entry: HourCounts,
    q: QTotal,
    rows: Sequence[Sequence[int]],
    keys: dict[int, list[tuple[datetime, str]]] | None,
) -> None:
    """Add the hours `q` recounted to a span (and widen it to the window)."""
    for hour, n, t in rows:
        if t != entry.tokens.get(hour, 0) and entry.lo <= hour < entry.hi:
            entry.volatile[hour] = entry.serial
        entry.set(hour, t, n, None if keys is None else keys.get(hour, []))
    entry.lo, entry.hi = min(entry.lo, q.a), max(entry.hi, q.b)
    stale = [h for h, s in entry.volatile.items() if s < entry.serial - _VOLATILE_QUIET]
    for hour in stale:
        del entry.volatile[hour]
    while len(entry.volatile) > _VOLATILE_KEPT:
        del entry.volatile[min(entry.volatile, key=entry.volatile.__getitem__)]


async def fill(
    session: AsyncSession,
    cache: QCountCache,
    q: QTotal,
    indexed: Sequence[ColumnElement[bool]],
    *,
    count_first: bool,
) -> None:
    """Count the many hours `q` recounts (a q's first request, a window past the cached
    span) in a statement of their own, and cache them; then `plan` again.

    Exact without a digest: the counts, the tokens and the rebuild count are read in one
    statement, so in one snapshot. One scan of the matches (q on its index, `indexed`)
    gives the per-hour counts and, when `q.keys`, the keys of the first `KEYS_KEPT` + 1
    matches too (the page, the counts and the keys each scanned the matches before).
    Keeping the matches for both costs a tuplestore, 8-20 % of a common q's count, so on
    PostgreSQL a q not seen yet (`count_first`) is counted alone first, and its keys read
    (with the counts again) only if it proves rare: a second trigram scan, of 2,000
    matches at most (~10 ms).
    """
    # A span that kept keys holds a rare q already: read them at once. On SQLite every
    # scan reads the whole table (no trigram index): one scan for both, always.
    probe = q.keys and count_first and q.entry is None and dialect_of(session).indexes_substrings
    found = await _fill_rows(session, q, indexed, keys=q.keys and not probe)
    if probe and sum(n for _, n, _ in found[1]) <= KEYS_KEPT:
        found = await _fill_rows(session, q, indexed, keys=True)
    rebuilds, rows, found_keys = found
    entry = q.entry
    if entry is None:
        _record_span(cache, q, rebuilds, rows, found_keys)
    elif entry.rebuilds != rebuilds:
        cache.drop(q.key)  # counted after a rebuild: the next plan starts a new span
    else:
        _record_hours(entry, q, rows, found_keys)


async def _fill_rows(
    session: AsyncSession, q: QTotal, indexed: Sequence[ColumnElement[bool]], *, keys: bool
) -> tuple[int, list[list[int]], dict[int, list[tuple[datetime, str]]] | None]:
    """(rebuilds, (hour, matches, token) rows, the matches' keys or None) of the hours `q`
    recounts, in one statement (`fill`)."""
    found = select(_T.c.created_at, _T.c.task_id).where(_in_ranges(q.recount), *indexed)
    if keys:
        # Read once, for the counts and the keys. (SQLite 3.35+ materializes a CTE read
        # twice by itself, and older ones do not know the keyword.)
        source: Any = found.cte("q_found").prefix_with("MATERIALIZED", dialect="postgresql")
        keys_json = _keys_json(session, source)
    else:
        source, keys_json = found.subquery("q_found"), literal(None)
    per_hour = _per_hour(session, _match_counts(session, source, ()), q.recount)
    row = (await session.execute(select(_rebuilds(), per_hour, keys_json))).one()
    return int(row[0]), int_rows(row[1]), _keys_by_hour(row[2]) if keys else None


async def changed_hours(session: AsyncSession, q: QTotal) -> list[int]:
    """The hours of the span whose token is not the one their cached count was taken
    with (one statement: the overall 1-hour rollup rows and the pending rows)."""
    entry = q.entry
    if entry is None:
        return []
    lo, hi = max(q.a, entry.lo), min(q.b, entry.hi)
    tokens = _tokens(lo, hi).subquery()
    stmt = select(tokens.c.b, func.sum(tokens.c.t)).group_by(tokens.c.b)
    now = {int(b): int(t) for b, t in (await session.execute(stmt)).all()}
    return [h for h in now.keys() | entry.tokens.keys() if now.get(h, 0) != entry.tokens.get(h, 0)]


def _overall_hours() -> list[ColumnElement[bool]]:
    return [
        _R.series == SERIES_MARGINAL,
        _R.grain == HOUR,
        _R.agent_type == "",
        _R.source == "",
        _R.model == "",
    ]


def _pending_hour() -> ColumnElement[Any]:
    p = _P.c
    return p.created_s - (p.created_s % HOUR + HOUR) % HOUR


def _tokens(a: int, b: int) -> Any:
    """(b, t): each hour's parts of its token in [a, b) (sum them per hour)."""
    p = _P.c
    rows = select(_R.bucket.label("b"), _R.changes.label("t")).where(
        *_overall_hours(), _R.bucket >= a, _R.bucket < b
    )
    hour = _pending_hour()
    pending = (
        select(hour.label("b"), func.count().label("t"))
        .where(p.created_s >= a, p.created_s < b)
        .group_by(hour)
    )
    return union_all(rows, pending)


def _rebuilds() -> ColumnElement[Any]:
    """Rebuilds plus prune batches: either changes hours without a contribution."""
    generation = _S.c.rebuilds + _S.c.prunes
    return select(func.coalesce(func.max(generation), 0)).scalar_subquery()


def _digest(a: int, b: int) -> ColumnElement[Any]:
    """The sum of the tokens of every hour in [a, b).

    `changes` adds up across grains (a rebuild sets each row's to its tasks, a fold adds
    each contribution to one row per grain), so the hours are summed from the coarsest
    blocks that fit: a few dozen rollup rows, whatever the window's length."""
    p = _P.c
    top = _COARSE[-1]
    lo, hi = -(-a // top) * top, b // top * top
    blocks = _blocks(a, b) if lo >= hi else [*_blocks(a, lo), *_blocks(hi, b)]
    by_grain: dict[int, list[int]] = {}
    for grain, bucket in blocks:
        by_grain.setdefault(grain, []).append(bucket)
    which = [and_(_R.grain == g, _R.bucket.in_(buckets)) for g, buckets in by_grain.items()]
    if lo < hi:
        which.append(and_(_R.grain == top, _R.bucket >= lo, _R.bucket < hi))
    overall = [_R.series == SERIES_MARGINAL, _R.agent_type == "", _R.source == "", _R.model == ""]
    changes = select(func.coalesce(func.sum(_R.changes), 0)).where(*overall, or_(false(), *which))
    pending = select(func.count()).select_from(_P).where(p.created_s >= a, p.created_s < b)
    return changes.scalar_subquery() + pending.scalar_subquery()


# The grains from an hour up (all nested and aligned to the epoch).
_COARSE = tuple(g for g in GRAINS if g >= HOUR)


def _blocks(a: int, b: int) -> list[tuple[int, int]]:
    """(grain, bucket): the fewest whole blocks that cover [a, b) (hour-aligned) once."""
    out = []
    pos = a
    while pos < b:
        grain = next(g for g in reversed(_COARSE) if pos % g == 0 and pos + g <= b)
        out.append((grain, pos))
        pos += grain
    return out


def _in_ranges(ranges: Sequence[tuple[int, int]]) -> ColumnElement[bool]:
    return or_(*(and_(_T.c.created_at >= _ts(s), _T.c.created_at < _ts(e)) for s, e in ranges))


def _match_counts(
    session: AsyncSession, source: Any, where: Sequence[ColumnElement[bool]]
) -> Select[Any]:
    """(b, n, t = 0): the rows of `source` (with `created_at`) matching `where`, per hour.
    Grouped by `hour_bin` and turned into seconds once per hour: cheap per row."""
    bin_ = dialect_of(session).hour_bin(source.c.created_at).label("bin")
    grouped = select(bin_, func.count().label("n")).where(*where).group_by(bin_).subquery()
    return select(
        dialect_of(session).hour_bin_seconds(grouped.c.bin).label("b"),
        grouped.c.n,
        literal(0, BigInteger).label("t"),
    )


def _recounted(
    session: AsyncSession, plain: Sequence[ColumnElement[bool]], ranges: Sequence[tuple[int, int]]
) -> ColumnElement[Any]:
    """(hour, matches, token) of every hour in `ranges` with either, as `int_rows` text."""
    if not ranges:
        return literal(None)
    return _per_hour(session, _match_counts(session, _T, [_in_ranges(ranges), *plain]), ranges)


def _per_hour(
    session: AsyncSession, counts: Select[Any], ranges: Sequence[tuple[int, int]]
) -> ColumnElement[Any]:
    """(hour, matches, token) of every hour in `ranges` with either, as `int_rows` text:
    `counts` (b, n, t = 0) with the tokens of those hours."""
    p = _P.c
    zero = literal(0, BigInteger)
    rows = select(_R.bucket.label("b"), zero.label("n"), _R.changes.label("t")).where(
        *_overall_hours(), or_(*(and_(_R.bucket >= s, _R.bucket < e) for s, e in ranges))
    )
    p_hour = _pending_hour()
    pending = (
        select(p_hour.label("b"), zero.label("n"), func.count().label("t"))
        .where(or_(*(and_(p.created_s >= s, p.created_s < e) for s, e in ranges)))
        .group_by(p_hour)
    )
    parts = union_all(counts, rows, pending).subquery()
    per_hour = (
        select(
            parts.c.b,
            func.sum(parts.c.n).label("n"),
            func.sum(parts.c.t).label("t"),
        )
        .group_by(parts.c.b)
        .subquery()
    )
    c = per_hour.c
    return select(dialect_of(session).int_rows_agg([c.b, c.n, c.t])).scalar_subquery()


def _recounted_keys(
    session: AsyncSession, plain: Sequence[ColumnElement[bool]], ranges: Sequence[tuple[int, int]]
) -> ColumnElement[Any]:
    """(hour, created_at, task_id) of the matches in `ranges` as JSON, `KEYS_KEPT` + 1 at
    most (more: too many to keep)."""
    if not ranges:
        return literal(None)
    return _keys_json(session, _T, [_in_ranges(ranges), *plain])


def _keys_json(
    session: AsyncSession, source: Any, where: Sequence[ColumnElement[bool]] = ()
) -> ColumnElement[Any]:
    """(hour, created_at, task_id) of the rows of `source` matching `where` as JSON,
    `KEYS_KEPT` + 1 at most."""
    hour = dialect_of(session).epoch_bucket(source.c.created_at, HOUR)
    found = (
        select(hour.label("b"), source.c.created_at, source.c.task_id)
        .where(*where)
        .limit(KEYS_KEPT + 1)
        .subquery()
    )
    c = found.c
    return select(
        dialect_of(session).json_rows_agg([c.b, c.created_at, c.task_id])
    ).scalar_subquery()


def _keys_by_hour(value: str | None) -> dict[int, list[tuple[datetime, str]]] | None:
    """The matches `_recounted_keys` read, per hour and sorted; None when too many."""
    rows = orjson.loads(value) if value else []
    if len(rows) > KEYS_KEPT:
        return None
    out: dict[int, list[tuple[datetime, str]]] = {}
    for hour, at, task_id in rows:
        out.setdefault(int(hour), []).append((to_utc(datetime.fromisoformat(at)), task_id))
    for found in out.values():
        found.sort()
    return out


def page_keys(
    q: QTotal, descending: bool, after: datetime | None, wanted: int
) -> tuple[list[str], list[tuple[datetime, datetime]]] | None:
    """For a page in created_at order: the ids of the first `wanted` cached matches (past
    `after`, a cursor's created_at) and the time ranges whose matches must be read raw
    (recounted hours, window edges), or None when the cache holds no keys or too few
    hours are trusted. Whole hours are taken, so the database orders ties itself."""
    entry = q.entry
    if entry is None or entry.keys is None:
        return None
    if sum(e - s for s, e in q.recount) > _FEW_HOURS * HOUR:
        return None
    skip = {h for s, e in q.recount for h in range(s, e, HOUR)}
    hours = sorted((h for h in entry.keys if q.a <= h < q.b and h not in skip), reverse=descending)
    ids: list[str] = []
    counted = 0
    for hour in hours:
        found = entry.keys[hour]
        if after is not None:
            if (hour + HOUR <= _seconds(after)) if not descending else (hour > _seconds(after)):
                continue
            counted += sum(1 for at, _ in found if (at < after if descending else at > after))
        else:
            counted += len(found)
        ids += [task_id for _, task_id in found]
        if counted >= wanted:
            break
    ranges = [(_ts(s), _ts(e)) for s, e in q.recount] + q.edge_ranges
    return ids, ranges


def _seconds(at: datetime) -> int:
    return (to_utc(at) - EPOCH) // timedelta(seconds=1)
