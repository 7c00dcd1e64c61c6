"""Analytics rollups kept by deltas: what a task write contributes, and adding it.

A task contributes to one block per grain, chosen by its `created_at`, in two series
(all models together, and per model). Every write subtracts what the task contributed
before and adds what it contributes now, so status moves, late metrics and model
changes land in the right blocks without recomputation. A write appends its
contributions to `analytics_pending` (`apply_task_write`); `fold` sums them into rollup
rows (`deltas`) and adds those (`apply_deltas`). Rebuilding from the tasks is `rebuild`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    insert,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models.analytics import (
    HISTOGRAMS_TABLE,
    PENDING_TABLE,
    ROLLUPS_TABLE,
)
from dashboard_api.services.analytics.bins import BinSum
from dashboard_api.services.analytics.layout import (
    COUNTERS,
    FAILURE_MARGINAL_SERIES,
    FAILURE_SERIES,
    GRAINS,
    HIST_GRAINS,
    HIST_ROW_KEY,
    HIST_VALUES,
    KEY_COLUMNS,
    KIND_DURATION,
    KIND_FIRST_OUTPUT,
    ROLLUP_VALUES,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    SERIES_MODEL_MARGINAL,
    SERIES_PER_MODEL,
    counters_of,
    epoch_seconds,
    first_output_us,
    hist_points,
    value_bin,
)
from dashboard_api.services.task_hooks import TaskSnapshot, TaskWrite


class Contribution(NamedTuple):
    """What one version of a task adds to the rollups: where, and how much."""

    created_s: int
    agent_type: str
    source: str
    model: str
    failure_reason: str  # '' for none
    counters: list[int]
    points: list[tuple[int, int]]


def contribution_of(s: TaskSnapshot) -> Contribution:
    """A task version's contribution (its block keys come from `created_s`)."""
    return Contribution(
        epoch_seconds(s.created_at),
        s.agent_type,
        s.source,
        s.model or "",
        s.failure_reason or "",
        counters_of(s),
        hist_points(s),
    )


# Where a contribution lands in one block: (agent_type, source, model, failure_reason).
Place = tuple[str, str, str, str]


def _keys(grain: int, bucket: int, place: Place) -> list[tuple[Any, ...]]:
    agent_type, source, model, reason = place
    keys: list[tuple[Any, ...]] = [
        (grain, bucket, SERIES_ALL_MODELS, agent_type, source, ""),
        (grain, bucket, SERIES_PER_MODEL, agent_type, source, model),
        (grain, bucket, SERIES_MARGINAL, "", "", ""),
    ]
    if reason in FAILURE_SERIES:
        keys.append((grain, bucket, FAILURE_SERIES[reason], agent_type, source, model))
        keys.append((grain, bucket, FAILURE_MARGINAL_SERIES[reason], "", "", ""))
    return keys


def _hist_keys(grain: int, bucket: int, place: Place) -> list[tuple[Any, ...]]:
    agent_type, source, model, reason = place
    keys: list[tuple[Any, ...]] = [
        (grain, bucket, SERIES_ALL_MODELS, agent_type, source, ""),
        (grain, bucket, SERIES_PER_MODEL, agent_type, source, model),
        (grain, bucket, SERIES_MARGINAL, agent_type, "", ""),
        (grain, bucket, SERIES_MARGINAL, "", source, ""),
        (grain, bucket, SERIES_MARGINAL, "", "", ""),
        (grain, bucket, SERIES_MODEL_MARGINAL, "", "", model),
    ]
    if reason in FAILURE_SERIES:
        keys.append((grain, bucket, FAILURE_SERIES[reason], agent_type, source, model))
    return keys


def deltas(
    signed: Iterable[tuple[int, Contribution]], *, changes: bool = False
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rollup and histogram rows of signed contributions summed, sorted by key, zero rows
    dropped. With `changes`, each rollup row ends with its number of contributions (the
    `changes` column: either sign counts one), as `apply_deltas` takes them."""
    width = len(COUNTERS) + (1 if changes else 0)
    # Contributions in the same finest block with the same agent type, source, model and
    # failure reason land on the same rows of every grain and series: they are summed
    # first and spread once (a fold of a burst of registrations spreads a few groups, not
    # every row).
    groups: dict[tuple[int, Place], list[int]] = {}
    points: dict[tuple[int, Place, int, int], int] = {}
    for sign, c in signed:
        place = (c.agent_type, c.source, c.model, c.failure_reason)
        where = (c.created_s - c.created_s % GRAINS[0], place)
        acc = groups.get(where)
        if acc is None:
            acc = groups[where] = [0] * width
        for i, v in enumerate(c.counters):
            acc[i] += sign * v
        if changes:
            acc[-1] += 1
        for kind, b in c.points:
            point = (c.created_s - c.created_s % HIST_GRAINS[0], place, kind, b)
            points[point] = points.get(point, 0) + sign
    counters: dict[tuple[Any, ...], list[int]] = {}
    for (start, place), acc in groups.items():
        for grain in GRAINS:
            for key in _keys(grain, start - start % grain, place):
                total = counters.get(key)
                if total is None:
                    counters[key] = acc.copy()
                else:
                    for i, v in enumerate(acc):
                        total[i] += v
    hist: dict[tuple[Any, ...], int] = {}
    for (start, place, kind, b), n in points.items():
        if not n:
            continue
        for grain in HIST_GRAINS:
            for key in _hist_keys(grain, start - start % grain, place):
                hkey = (*key, kind, b)
                hist[hkey] = hist.get(hkey, 0) + n
    rows = [(*k, *v) for k, v in sorted(counters.items()) if any(v)]
    hrows = [(*k, n) for k, n in sorted(hist.items()) if n]
    return rows, hrows


def task_deltas(
    before: TaskSnapshot | None, after: TaskSnapshot
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rollup and histogram deltas of one write, sorted by key, zero rows dropped."""
    signed = [(1, contribution_of(after))]
    if before is not None:
        signed.insert(0, (-1, contribution_of(before)))
    return deltas(signed)


_ROLLUPS = ROLLUPS_TABLE
_HIST = HISTOGRAMS_TABLE
_PENDING = PENDING_TABLE
# Built once, values bound at execution: `insert(...).values(rows)` was compiled anew
# on every call (a profile of registrations showed SQLAlchemy's compiler as half of the
# server CPU the rollups added to each).
_INSERT_PENDING = insert(_PENDING)


def _pending_row(sign: int, s: TaskSnapshot) -> dict[str, Any]:
    return {
        "sign": sign,
        "created_s": epoch_seconds(s.created_at),
        "agent_type": s.agent_type,
        "source": s.source,
        "model": s.model or "",
        "failure_reason": s.failure_reason or "",
        "status": s.status,
        "cost_micros": s.cost_micros,
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "cache_read_tokens": s.cache_read_tokens,
        "cache_write_tokens": s.cache_write_tokens,
        "duration_us": s.duration_us,
        "first_output_us": first_output_us(s),
    }


def contribution_of_pending(row: Any) -> Contribution:
    """The contribution a row of `analytics_pending` records (its sign not applied)."""
    points = []
    if row.duration_us is not None:
        points.append((KIND_DURATION, value_bin(max(0, row.duration_us))))
    if row.first_output_us is not None:
        points.append((KIND_FIRST_OUTPUT, value_bin(row.first_output_us)))
    return Contribution(
        row.created_s,
        row.agent_type,
        row.source,
        row.model,
        row.failure_reason,
        counters_of(row),
        points,
    )


def _enabled(session: AsyncSession) -> bool:
    """Whether the app keeps rollups (`Settings.analytics_rollups_enabled`): writes then
    record their pending rows."""
    return bool(session.info.get("analytics_rollups_enabled", True))


def _pending_rows(before: TaskSnapshot | None, after: TaskSnapshot) -> list[dict[str, Any]]:
    """The `analytics_pending` rows of one write: none when nothing analytics counts
    changed (an output append, say)."""
    new = _pending_row(1, after)
    if before is None:
        return [new]
    old = _pending_row(-1, before)
    if {**old, "sign": 1} == new:
        return []
    return [old, new]


async def apply_task_write(
    session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
) -> None:
    """Record one task write's rollup contribution (called inside the write's transaction).

    It is appended to `analytics_pending`, not added to the rollup rows: those are shared
    by every task of the same blocks, and each writer would hold them locked until its
    commit. `services.analytics.fold` moves pending rows into the rollups in batches.
    """
    if not _enabled(session):
        return
    rows = _pending_rows(before, after)
    if rows:
        await session.execute(_INSERT_PENDING, rows[0] if len(rows) == 1 else rows)


def new_task_rows(session: AsyncSession, after: TaskSnapshot) -> list[tuple[Any, dict[str, Any]]]:
    """`apply_task_write` of a new task as rows for its registration to insert with it
    (task_hooks.TaskHook.new_rows): on PostgreSQL the task, its event and this row are
    one statement, where the row was a third statement and round trip of its own."""
    if not _enabled(session):
        return []
    return [(_PENDING, row) for row in _pending_rows(None, after)]


async def apply_task_writes(session: AsyncSession, writes: Sequence[TaskWrite]) -> None:
    """`apply_task_write` of several writes of distinct tasks: the same pending rows, in
    one statement."""
    if not _enabled(session):
        return
    rows = [row for before, after in writes for row in _pending_rows(before, after)]
    if rows:  # one array per column on PostgreSQL: no parameters per row to process
        columns = tuple(rows[0])
        await dialect_of(session).insert_rows(
            session, _PENDING, columns, [tuple(row.values()) for row in rows]
        )


async def apply_deltas(
    session: AsyncSession, rows: Sequence[tuple[Any, ...]], hrows: Sequence[tuple[Any, ...]]
) -> None:
    """Add rollup rows (from `deltas(..., changes=True)`) and histogram rows to the
    tables."""
    # Rows are sorted by key, and rollups always go before histograms, so that two
    # writers of shared rows lock them in the same order and never deadlock.
    await dialect_of(session).upsert_add_many(session, _ROLLUPS, KEY_COLUMNS, ROLLUP_VALUES, rows)
    await add_histogram_deltas(session, hrows)


async def add_histogram_deltas(session: AsyncSession, hrows: Sequence[tuple[Any, ...]]) -> None:
    """Add histogram deltas ((*HIST_KEY_COLUMNS, count) rows, as `task_deltas` makes them,
    any number) to the packed histogram rows: a read-modify-write of each row touched,
    in three statements whatever the number of rows.

    On PostgreSQL concurrent writers must neither lose an update nor deadlock: the rows
    missing are first inserted empty (in sorted key order; an insert meeting another
    writer's uncommitted one waits for it), then every row is locked in key order
    (SELECT ... ORDER BY ... FOR UPDATE), merged here and written back. A writer holds
    row locks of this table only after its rollup rows and as the last shared rows of its
    transaction, and takes them in one order in each step, so no cycle of waits forms.
    SQLite has one writer at a time.
    """
    if not hrows:
        return
    changes: dict[tuple[Any, ...], BinSum] = {}
    for *where, index, count in hrows:
        changes.setdefault(tuple(where), BinSum()).add_bin(index, count)
    keys = sorted(changes)
    await dialect_of(session).insert_missing(
        session, _HIST, HIST_ROW_KEY, HIST_VALUES, [(*k, 0, b"") for k in keys]
    )
    current = await dialect_of(session).select_for_update_by_keys(
        session, _HIST, HIST_ROW_KEY, HIST_VALUES, keys
    )
    width = len(HIST_ROW_KEY)
    merged = []
    for row in current:
        key = tuple(row[:width])
        acc = changes[key]
        acc.add_packed(row[width], bytes(row[width + 1]))
        merged.append((*key, *acc.packed()))
    await dialect_of(session).update_by_keys(session, _HIST, HIST_ROW_KEY, HIST_VALUES, merged)
