"""Analytics rollups built while tasks arrive in order of creation (the seed's bulk load).

`rebuild_rollups` reads every task back after a load and sums it in SQL: at 1M tasks
that took longer than loading them. A load that generates its tasks oldest first knows
each one's figures already; `RollupStream` sums them as they pass, one open block per
grain, and hands over a block's rows when a later block of its grain starts, so memory
holds a few blocks whatever the number of tasks. The rows are those `rebuild_rollups`
writes for the same tasks (same keys, counters, `changes` = tasks, same packed
histograms), staged in temporary tables and written by `write_streamed` in the rebuild's
order; tests/analytics/test_seed_rollups.py compares the two.
"""

from __future__ import annotations

from operator import add
from typing import Any

from sqlalchemy import Column, MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.bulk import bulk_insert
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models.analytics import (
    AnalyticsHistogram,
    AnalyticsPending,
    AnalyticsRollup,
    AnalyticsState,
)
from dashboard_api.services.analytics.layout import (
    COUNTERS,
    FAILURE_MARGINAL_SERIES,
    FAILURE_SERIES,
    FOLD_LOCK_KEY,
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
    SERIES_PER_MODEL,
    STATUS_INDEX,
    value_bin,
)
from dashboard_api.services.analytics.rebuild import add_lanes, hist_series_keys, pack_lanes

_ROLLUPS: Table = AnalyticsRollup.__table__  # type: ignore[assignment]
_HIST: Table = AnalyticsHistogram.__table__  # type: ignore[assignment]
_PENDING: Table = AnalyticsPending.__table__  # type: ignore[assignment]
_STATE: Table = AnalyticsState.__table__  # type: ignore[assignment]
ROLLUP_COLUMNS = (*KEY_COLUMNS, *ROLLUP_VALUES)
HIST_COLUMNS = (*HIST_ROW_KEY, *HIST_VALUES)
_WIDTH = len(COUNTERS)
Combo = tuple[str, str, str]  # (agent_type, source, model)
Lanes = tuple[int, int]  # (lowest bin, counts as 64-bit lanes from there up)
# A failure series -> its overall (marginal) series.
_FAILURE_MARGINAL = {FAILURE_SERIES[r]: FAILURE_MARGINAL_SERIES[r] for r in FAILURE_SERIES}


class RollupStream:
    """Rollup and histogram rows of tasks added oldest first (by `created_at`)."""

    def __init__(self) -> None:
        # Per grain: the open block's start, and its counters per (series, agent_type,
        # source, model) of the per-model series (the failure series included); the
        # other series are summed from them when the block closes.
        self._open: list[int | None] = [None] * len(GRAINS)
        self._counters: list[dict[tuple[int, str, str, str], list[int]]] = [{} for _ in GRAINS]
        # Histograms: the open finest block's bins per (combo, failure reason, kind), then
        # per grain the open block's packed rows per (series, agent_type, source, model,
        # kind).
        self._hist_open: list[int | None] = [None] * len(HIST_GRAINS)
        self._bins: dict[tuple[str, str, str, str, int], dict[int, int]] = {}
        self._hist: list[dict[tuple[Any, ...], Lanes]] = [{} for _ in HIST_GRAINS]
        self._block_end = -1
        self.rollup_rows: list[tuple[Any, ...]] = []
        self.hist_rows: list[tuple[Any, ...]] = []

    def add(
        self,
        created_s: int,
        combo: Combo,
        failure_reason: str | None,
        status: str,
        figures: tuple[int, int, int, int, int],
        duration_us: int | None,
        first_output_us: int | None,
    ) -> None:
        """One task: created at `created_s` (epoch seconds, never before the last task's
        block), its (cost_micros, input, output, cache read, cache write tokens)."""
        if created_s >= self._block_end:
            self._advance(created_s)
        counters = self._counters[0]
        reason = failure_reason if failure_reason in FAILURE_SERIES else ""
        keys: tuple[tuple[int, str, str, str], ...] = ((SERIES_PER_MODEL, *combo),)
        if reason:
            keys += ((FAILURE_SERIES[reason], *combo),)
        for key in keys:
            acc = counters.get(key)
            if acc is None:
                acc = counters[key] = [0] * _WIDTH
            acc[0] += 1
            acc[STATUS_INDEX[status]] += 1
            acc[6] += figures[0]
            acc[7] += figures[1]
            acc[8] += figures[2]
            acc[9] += figures[3]
            acc[10] += figures[4]
            if duration_us is not None:
                acc[11] += duration_us
                acc[12] += 1
        if duration_us is not None:
            self._bin((*combo, reason, KIND_DURATION), value_bin(max(0, duration_us)))
        if first_output_us is not None:
            self._bin((*combo, reason, KIND_FIRST_OUTPUT), value_bin(first_output_us))

    def _bin(self, key: tuple[str, str, str, str, int], index: int) -> None:
        bins = self._bins.get(key)
        if bins is None:
            bins = self._bins[key] = {}
        bins[index] = bins.get(index, 0) + 1

    def take(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The rows of the blocks closed since the last call (ROLLUP_COLUMNS and
        HIST_COLUMNS order)."""
        out = self.rollup_rows, self.hist_rows
        self.rollup_rows, self.hist_rows = [], []
        return out

    def finish(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Close every open block; the rows not taken yet."""
        for i in range(len(GRAINS)):
            self._close_counters(i)
        for i in range(len(HIST_GRAINS)):
            self._close_hist(i)
        self._block_end = -1
        return self.take()

    def _advance(self, t: int) -> None:
        if self._open[0] is not None and t < self._open[0]:
            raise ValueError("tasks must be added in order of creation")
        for i, grain in enumerate(GRAINS):
            start = t - t % grain
            if self._open[i] == start:
                break  # the coarser blocks hold this one: still open too
            self._close_counters(i)
            self._open[i] = start
        for i, grain in enumerate(HIST_GRAINS):
            start = t - t % grain
            if self._hist_open[i] == start:
                break
            self._close_hist(i)
            self._hist_open[i] = start
        self._block_end = t - t % GRAINS[0] + GRAINS[0]

    def _close_counters(self, i: int) -> None:
        rows, start = self._counters[i], self._open[i]
        if start is None or not rows:
            return
        grain = GRAINS[i]
        if i + 1 < len(GRAINS):
            # Lists are never changed once their block is closed: shared, not copied.
            coarser = self._counters[i + 1]
            for combo, acc in rows.items():
                have = coarser.get(combo)
                coarser[combo] = acc if have is None else list(map(add, have, acc))
        by_pair: dict[tuple[str, str], list[int]] = {}
        marginals: dict[int, list[int]] = {}
        out = self.rollup_rows
        for (series, agent_type, source, model), acc in rows.items():
            out.append((grain, start, series, agent_type, source, model, *acc, acc[0]))
            if series == SERIES_PER_MODEL:
                have = by_pair.get((agent_type, source))
                by_pair[(agent_type, source)] = acc if have is None else list(map(add, have, acc))
            else:  # a failure series: its overall row
                overall = _FAILURE_MARGINAL[series]
                have = marginals.get(overall)
                marginals[overall] = acc if have is None else list(map(add, have, acc))
        total = [0] * _WIDTH
        for (agent_type, source), acc in by_pair.items():
            out.append((grain, start, SERIES_ALL_MODELS, agent_type, source, "", *acc, acc[0]))
            total = list(map(add, total, acc))
        out.append((grain, start, SERIES_MARGINAL, "", "", "", *total, total[0]))
        for series, acc in marginals.items():
            out.append((grain, start, series, "", "", "", *acc, acc[0]))
        self._counters[i] = {}

    def _close_hist(self, i: int) -> None:
        start = self._hist_open[i]
        if start is None:
            return
        if i == 0:
            level: dict[tuple[Any, ...], Lanes] = {}
            for (agent_type, source, model, reason, kind), bins in self._bins.items():
                lo = min(bins)
                lanes = sum(n << (64 * (b - lo)) for b, n in bins.items())
                for series, _, *rest in hist_series_keys(
                    0, agent_type, source, model, reason, kind
                ):
                    key = (series, *rest)
                    level[key] = add_lanes(level.get(key), lo, lanes)
            self._bins = {}
            self._hist[0] = level
        level = self._hist[i]
        if not level:
            return
        grain = HIST_GRAINS[i]
        if i + 1 < len(HIST_GRAINS):
            coarser = self._hist[i + 1]
            for key, (lo, lanes) in level.items():
                coarser[key] = add_lanes(coarser.get(key), lo, lanes)
        for (series, agent_type, source, model, kind), (lo, lanes) in level.items():
            bin_lo, counts = pack_lanes(lo, lanes)
            self.hist_rows.append(
                (grain, start, series, agent_type, source, model, kind, bin_lo, counts)
            )
        self._hist[i] = {}


def _stage(target: Table) -> Table:
    return Table(f"streamed_{target.name}", MetaData(), *(Column(c.name, c.type) for c in target.c))


_STAGES = (_stage(_ROLLUPS), _stage(_HIST))


async def open_stages(session: AsyncSession) -> None:
    """Temporary tables (unindexed, unlogged) that take the streamed rows."""
    for stage, target in zip(_STAGES, (_ROLLUPS, _HIST), strict=True):
        await session.execute(text(f'DROP TABLE IF EXISTS "{stage.name}"'))
        like = f'SELECT * FROM "{target.name}" WHERE 1 = 0'  # noqa: S608 - our names
        await session.execute(text(f'CREATE TEMPORARY TABLE "{stage.name}" AS {like}'))


async def stage_rows(
    session: AsyncSession, rows: list[tuple[Any, ...]], hist_rows: list[tuple[Any, ...]]
) -> None:
    await bulk_insert(session, _STAGES[0], ROLLUP_COLUMNS, rows)
    await bulk_insert(session, _STAGES[1], HIST_COLUMNS, hist_rows)


async def write_streamed(session: AsyncSession) -> None:
    """Move the staged rows into the (empty) rollup tables, sorted as `rebuild_rollups`
    writes them (a block's rows, and a series' run of blocks, share heap pages), with
    the counters' primary key built afterwards on PostgreSQL; count it as a rebuild."""
    lock = dialect_of(session).advisory_xact_lock_sql(FOLD_LOCK_KEY)
    if lock is not None:
        await session.execute(lock)
    await dialect_of(session).lock_tables_exclusive(
        session, [_ROLLUPS.name, _HIST.name, _PENDING.name]
    )
    rollups, hist = _STAGES
    dropped = await dialect_of(session).drop_primary_key(session, _ROLLUPS)
    columns = ", ".join(f'"{c}"' for c in ROLLUP_COLUMNS)
    await session.execute(
        text(
            f'INSERT INTO "{_ROLLUPS.name}" ({columns}) SELECT {columns} '  # noqa: S608
            f'FROM "{rollups.name}" ORDER BY series, grain, bucket'
        )
    )
    if dropped:
        await dialect_of(session).add_primary_key(session, _ROLLUPS)
    columns = ", ".join(f'"{c}"' for c in HIST_COLUMNS)
    order = "series, grain, bucket, agent_type, source, model, kind"
    await session.execute(
        text(
            f'INSERT INTO "{_HIST.name}" ({columns}) SELECT {columns} '  # noqa: S608
            f'FROM "{hist.name}" ORDER BY {order}'
        )
    )
    for stage in _STAGES:
        await session.execute(text(f'DROP TABLE "{stage.name}"'))
    # As a rebuild does: `changes` restarted from the blocks' tasks.
    await dialect_of(session).upsert_add_many(session, _STATE, ["id"], ["rebuilds"], [(1, 1)])
    await dialect_of(session).analyze_tables(session, [_ROLLUPS.name, _HIST.name])
