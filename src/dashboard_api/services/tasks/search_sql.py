"""The statements behind exact `q` totals (services/tasks/search.py): the hours' tokens,
their digest over a window, the matches counted per hour (with their keys for a rare q)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    false,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models import Task
from dashboard_api.db.models.analytics import (
    PENDING_TABLE,
    STATE_TABLE,
    AnalyticsRollup,
)
from dashboard_api.services.analytics.layout import EPOCH, GRAINS, SERIES_MARGINAL
from dashboard_api.services.tasks.search_hours import HOUR, KEYS_KEPT
from dashboard_api.timeutil import to_utc

_T = Task.__table__
_R = AnalyticsRollup.__table__.c
_P = PENDING_TABLE
_S = STATE_TABLE


def ts(seconds: int) -> datetime:
    """The instant `seconds` after the epoch."""
    return EPOCH + timedelta(seconds=seconds)


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


def tokens(a: int, b: int) -> Any:
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


def rebuilds() -> ColumnElement[Any]:
    """Rebuilds plus prune batches: either changes hours without a contribution."""
    generation = _S.c.rebuilds + _S.c.prunes
    return select(func.coalesce(func.max(generation), 0)).scalar_subquery()


def digest(session: AsyncSession, a: int, b: int) -> ColumnElement[Any]:
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
    where = dialect_of(session).keyed_or(overall, [false(), *which])
    changes = select(func.coalesce(func.sum(_R.changes), 0)).where(where)
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


def in_ranges(ranges: Sequence[tuple[int, int]]) -> ColumnElement[bool]:
    return or_(*(and_(_T.c.created_at >= ts(s), _T.c.created_at < ts(e)) for s, e in ranges))


def match_counts(
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


def recounted(
    session: AsyncSession, plain: Sequence[ColumnElement[bool]], ranges: Sequence[tuple[int, int]]
) -> ColumnElement[Any]:
    """(hour, matches, token) of every hour in `ranges` with either, as `int_rows` text."""
    if not ranges:
        return literal(None)
    return per_hour(session, match_counts(session, _T, [in_ranges(ranges), *plain]), ranges)


def per_hour(
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


def recounted_keys(
    session: AsyncSession, plain: Sequence[ColumnElement[bool]], ranges: Sequence[tuple[int, int]]
) -> ColumnElement[Any]:
    """(hour, created_at, task_id) of the matches in `ranges` as JSON, `KEYS_KEPT` + 1 at
    most (more: too many to keep)."""
    if not ranges:
        return literal(None)
    return keys_json(session, _T, [in_ranges(ranges), *plain])


def keys_json(
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


def keys_by_hour(value: str | None) -> dict[int, list[tuple[datetime, str]]] | None:
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
