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

This module plans and settles a total; the cache is `search_hours.py`, the statements
that read counts and tokens `search_sql.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, and_, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

import dashboard_api.services.tasks.search_sql as sql
from dashboard_api.bounded import BoundedCache
from dashboard_api.db.dialect import dialect_of, int_rows
from dashboard_api.db.models import Task
from dashboard_api.services.analytics.layout import EPOCH
from dashboard_api.services.tasks.search_hours import (
    HOUR,
    KEYS_KEPT,
    HourCounts,
    QCountCache,
    record_hours,
    record_span,
)
from dashboard_api.timeutil import merge_ranges, to_utc

# The bounds of an open window: whole hours that every stored instant lies between.
_LOW_S = (datetime(1, 1, 2, tzinfo=UTC) - EPOCH) // timedelta(seconds=1)
_HIGH_S = (datetime(9999, 12, 30, tzinfo=UTC) - EPOCH) // timedelta(seconds=1)
_FEW_HOURS = 48
_T = Task.__table__


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
    if lo is not None and lo < sql.ts(a):
        edge_ranges.append((lo, sql.ts(a)))
    if hi is not None and sql.ts(b) < hi:
        edge_ranges.append((sql.ts(b), hi))
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
    # A few hours: read their rows by time; more: let the planner use q's index.
    few = sum(e - s for s, e in recount) <= _FEW_HOURS * HOUR
    keys = rare if entry is None else entry.keys is not None
    if fill and not few:
        edge_count = _edge_count(edges, plain[1])
        return QTotal(
            key, entry, a, b, recount, known_tokens, known_count, edge_count, edge_ranges, keys,
            [], fill=True,
        )  # fmt: skip
    keyed: list[tuple[int, int]] | None = None
    if keys:
        keyed = recount if entry is None else _from_hour(recount, entry.keys_from)
    built_key = (
        dialect_of(session).backend, key, tuple(edge_ranges), a, b, tuple(recount),
        None if keyed is None else tuple(keyed),
    )  # fmt: skip
    built = _BUILT.get_recent(built_key)
    if built is None:
        indexed, scan = plain
        which = scan if few else indexed
        extras = [sql.rebuilds(), sql.digest(session, a, b), sql.recounted(session, which, recount)]
        if keyed is not None:
            extras.append(sql.recounted_keys(session, which, keyed))
        built = _BUILT.put(built_key, (_edge_count(edges, scan), extras))
    edge_count, extras = built
    return QTotal(
        key, entry, a, b, recount, known_tokens, known_count, edge_count, edge_ranges, keys, extras
    )


# The expressions `plan` adds to a page statement, by everything they are built from
# (the filters and window in `QTotal.key` and its edges, the hours counted again): a
# warm request plans the same ones as the request before it, and the same objects let
# the page statement be kept (`paginate(reusable=True)`) instead of built and walked
# for its cache key again (an id filter's first page spent more CPU there than in
# PostgreSQL).
_BUILT: BoundedCache[tuple[Any, ...], tuple[ColumnElement[Any], list[ColumnElement[Any]]]] = (
    BoundedCache(256)
)


def _edge_count(
    edges: Sequence[ColumnElement[bool]], scan: Sequence[ColumnElement[bool]]
) -> ColumnElement[Any]:
    """The raw count of the window's partial hours at its edges (0 without)."""
    if not edges:
        return literal(0, BigInteger)
    return select(func.count()).select_from(_T).where(or_(*edges), *scan).scalar_subquery()


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
    keys = sql.keys_by_hour(extras[3]) if q.keys else None
    if entry is None:
        record_span(cache, q.key, (q.a, q.b), rebuilds, rows, keys)
        return total
    entry.serial += 1
    record_hours(entry, (q.a, q.b), rows, keys)
    return total


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
    matches at most (~10 ms). A q with more matches than are kept, but sparse in its
    newest hours, keeps the keys of those hours (`_newest_hours`): read with their counts
    again, in a second statement over those hours only.
    """
    # A span that kept keys holds a rare q already: read them at once. On SQLite every
    # scan reads the whole table (no trigram index): one scan for both, always.
    entry = q.entry
    keys_from = None if entry is None else entry.keys_from
    probe = q.keys and count_first and entry is None and dialect_of(session).indexes_substrings
    rebuilds, rows, found_keys = await _fill_rows(
        session, q.recount, indexed, keys=q.keys and not probe, keys_from=keys_from
    )
    if q.keys and entry is None and found_keys is None:
        # Counted alone, or too many matches to keep: keys of every hour, or the newest.
        many = sum(n for _, n, _ in rows) > KEYS_KEPT
        keys_from = _newest_hours(rows) if many else None
        if keys_from is not None or not many:
            ranges = _from_hour(q.recount, keys_from)
            again, newer, found_keys = await _fill_rows(session, ranges, indexed, keys=True)
            if again != rebuilds or found_keys is None:
                found_keys = keys_from = None  # a rebuild in between: no keys this time
            elif keys_from is None:
                rows = newer
            else:
                rows = [r for r in rows if r[0] < keys_from] + newer
    if entry is None:
        record_span(cache, q.key, (q.a, q.b), rebuilds, rows, found_keys, keys_from)
    elif entry.rebuilds != rebuilds:
        cache.drop(q.key)  # counted after a rebuild: the next plan starts a new span
    else:
        record_hours(entry, (q.a, q.b), rows, found_keys)


# Newest keys are kept for a q whose matches there are under 1 in this many of their
# hours' tokens (at least one per task registered or changed): where walking the
# created_at index would read that many rows for each one of a page's.
_SPARSE = 20


def _newest_hours(rows: Sequence[Sequence[int]]) -> int | None:
    """The first of the newest hours whose matches, `KEYS_KEPT` at most, are worth
    keeping (`_SPARSE`), from (hour, matches, token) rows; None when none are."""
    held = tokens = 0
    start = None
    for hour, n, t in sorted(rows, key=lambda row: row[0], reverse=True):
        if held + n > KEYS_KEPT:
            break
        held, tokens, start = held + n, tokens + t, hour
    return start if held and held * _SPARSE <= tokens else None


def _from_hour(ranges: Sequence[tuple[int, int]], start: int | None) -> list[tuple[int, int]]:
    """The parts of `ranges` from the hour `start` on (all of them when None)."""
    if start is None:
        return list(ranges)
    return [(max(s, start), e) for s, e in ranges if e > start]


async def _fill_rows(
    session: AsyncSession,
    ranges: Sequence[tuple[int, int]],
    indexed: Sequence[ColumnElement[bool]],
    *,
    keys: bool,
    keys_from: int | None = None,
) -> tuple[int, list[list[int]], dict[int, list[tuple[datetime, str]]] | None]:
    """(rebuilds, (hour, matches, token) rows, the matches' keys or None) of the hours in
    `ranges`, in one statement (`fill`); the keys of the hours from `keys_from` on."""
    found = select(_T.c.created_at, _T.c.task_id).where(sql.in_ranges(ranges), *indexed)
    if keys:
        # Read once, for the counts and the keys. (SQLite 3.35+ materializes a CTE read
        # twice by itself, and older ones do not know the keyword.)
        source: Any = found.cte("q_found").prefix_with("MATERIALIZED", dialect="postgresql")
        newest = [] if keys_from is None else [source.c.created_at >= sql.ts(keys_from)]
        keys_json = sql.keys_json(session, source, newest)
    else:
        source, keys_json = found.subquery("q_found"), literal(None)
    per_hour = sql.per_hour(session, sql.match_counts(session, source, ()), ranges)
    row = (await session.execute(select(sql.rebuilds(), per_hour, keys_json))).one()
    return int(row[0]), int_rows(row[1]), sql.keys_by_hour(row[2]) if keys else None


async def changed_hours(session: AsyncSession, q: QTotal) -> list[int]:
    """The hours of the span whose token is not the one their cached count was taken
    with (one statement: the overall 1-hour rollup rows and the pending rows)."""
    entry = q.entry
    if entry is None:
        return []
    lo, hi = max(q.a, entry.lo), min(q.b, entry.hi)
    tokens = sql.tokens(lo, hi).subquery()
    stmt = select(tokens.c.b, func.sum(tokens.c.t)).group_by(tokens.c.b)
    now = {int(b): int(t) for b, t in (await session.execute(stmt)).all()}
    return [h for h in now.keys() | entry.tokens.keys() if now.get(h, 0) != entry.tokens.get(h, 0)]


def page_keys(
    q: QTotal, descending: bool, after: datetime | None, wanted: int
) -> tuple[list[str], list[tuple[datetime, datetime]]] | None:
    """For a page in created_at order: the ids of the first `wanted` cached matches (past
    `after`, a cursor's created_at) and the time ranges whose matches must be read raw
    (recounted hours, window edges), or None when the cache holds no keys, too few hours
    are trusted, or the page may need matches of hours older than the keys kept. Whole
    hours are taken, so the database orders ties itself."""
    entry = q.entry
    if entry is None or entry.keys is None:
        return None
    if sum(e - s for s, e in q.recount) > _FEW_HOURS * HOUR:
        return None
    skip = {h for s, e in q.recount for h in range(s, e, HOUR)}
    if not descending and _older_matches(q, entry, skip, after, descending):
        return None
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
    if counted < wanted and descending and _older_matches(q, entry, skip, after, descending):
        return None
    ranges = [(sql.ts(s), sql.ts(e)) for s, e in q.recount] + q.edge_ranges
    return ids, ranges


def _older_matches(
    q: QTotal, entry: HourCounts, skip: set[int], after: datetime | None, descending: bool
) -> bool:
    """Whether hours of the window older than the keys kept (`keys_from`) hold matches
    past the cursor `after` (hours read raw, `skip`, aside)."""
    if entry.keys_from is None:
        return False
    end = min(q.b, entry.keys_from)
    cursor = None if after is None else _seconds(after)
    for hour, n in entry.counts.items():
        if not n or not q.a <= hour < end or hour in skip:
            continue
        if cursor is None or (hour <= cursor if descending else hour + HOUR > cursor):
            return True
    return False


def _seconds(at: datetime) -> int:
    return (to_utc(at) - EPOCH) // timedelta(seconds=1)
