"""Store the rows `streamed.RollupArrays` sums during a seed, as `rebuild_rollups` would.

The rebuild writes its rows sorted by (series, grain, bucket): a block's rows, and a
series' run of blocks, share heap pages. Blocks close in time order, so the rows of one
(series, grain) come out already in bucket order: on PostgreSQL each such run is spilled
as binary COPY data to a temporary file of its own and the files are copied into the
(empty) tables in (series, grain) order once the tasks are in, the primary keys built
after; no staging table, no sort, memory bounded. SQLite: the rows go to temporary
tables and into the rollup tables sorted, as before.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
from sqlalchemy import Column, MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db import pgcopy
from dashboard_api.db.bulk import bulk_insert, copies_binary, copy_binary
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models.analytics import (
    AnalyticsHistogram,
    AnalyticsPending,
    AnalyticsRollup,
    AnalyticsState,
)
from dashboard_api.services.analytics.layout import (
    FOLD_LOCK_KEY,
    HIST_ROW_KEY,
    HIST_VALUES,
    KEY_COLUMNS,
    ROLLUP_VALUES,
)
from dashboard_api.services.analytics.streamed import Closed, Groups, HistRows, Keys, RollupArrays

_ROLLUPS: Table = AnalyticsRollup.__table__  # type: ignore[assignment]
_HIST: Table = AnalyticsHistogram.__table__  # type: ignore[assignment]
_PENDING: Table = AnalyticsPending.__table__  # type: ignore[assignment]
_STATE: Table = AnalyticsState.__table__  # type: ignore[assignment]
ROLLUP_COLUMNS = (*KEY_COLUMNS, *ROLLUP_VALUES)
HIST_COLUMNS = (*HIST_ROW_KEY, *HIST_VALUES)
_READ = 1 << 20


class RollupSink:
    """Where the closed rows go until `write` stores them (PostgreSQL: spill files;
    SQLite: temporary tables)."""

    def __init__(self, session: AsyncSession, rollups: RollupArrays) -> None:
        self._binary = copies_binary(session)
        self._rollups = rollups
        names = rollups.names
        self._strings = [pgcopy.Strings([*values, ""]) for values in names]  # -1: ''
        self._names = [(*values, "") for values in names]
        self._files: dict[tuple[str, int, int], IO[bytes]] = {}

    async def open(self, session: AsyncSession) -> None:
        if not self._binary:
            await _open_stages(session)

    def encode(self, closed: Closed) -> Any:
        """What `put` takes for these rows (PostgreSQL: encoded and spilled right here,
        off the event loop's thread)."""
        if not self._binary:
            return self._tuples(closed)
        keys = self._rollups.keys
        for grain, groups in closed.counters:
            for series in np.unique(keys.series[groups.key]).tolist():
                part = groups.where(keys.series[groups.key] == series)
                self._spill(_ROLLUPS.name, series, grain, self._counter_rows(grain, part))
        hist_keys = self._rollups.hist_keys
        for grain, rows in closed.histograms:
            if not len(rows):
                continue
            series_of = hist_keys.series[rows.key]
            for series in np.unique(series_of).tolist():
                self._spill(
                    _HIST.name, series, grain, self._hist_rows(grain, rows, series_of == series)
                )
        return None

    async def put(self, session: AsyncSession, encoded: Any) -> None:
        if encoded is not None:
            rollups, hist = encoded
            await bulk_insert(session, _STAGES[0], ROLLUP_COLUMNS, rollups)
            await bulk_insert(session, _STAGES[1], HIST_COLUMNS, hist)

    def _spill(self, table: str, series: int, grain: int, data: bytes) -> None:
        key = (table, series, grain)
        out = self._files.get(key)
        if out is None:
            out = self._files[key] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in write
        out.write(data)

    def _key_strings(self, rows: Any, keys: Keys, key: Any) -> None:
        rows.strings(self._strings[0], keys.agent[key])
        rows.strings(self._strings[1], keys.source[key])
        rows.strings(self._strings[2], keys.model[key])

    def _counter_rows(self, grain: int, groups: Groups) -> bytes:
        n = len(groups)
        rows = pgcopy.Rows(n, len(ROLLUP_COLUMNS))
        rows.ints([np.full(n, grain)], 4)
        rows.ints([groups.bucket], 8)
        rows.ints([self._rollups.keys.series[groups.key]], 2)
        self._key_strings(rows, self._rollups.keys, groups.key)
        values = groups.values
        rows.ints([*(values[:, i] for i in range(values.shape[1])), values[:, 0]], 8)
        return rows.data()

    def _hist_rows(self, grain: int, hist: HistRows, mask: Any) -> bytes:
        n = int(mask.sum())
        keys = self._rollups.hist_keys
        rows = pgcopy.Rows(n, len(HIST_COLUMNS))
        rows.ints([np.full(n, grain)], 4)
        rows.ints([hist.bucket[mask]], 8)
        rows.ints([keys.series[hist.key[mask]]], 2)
        self._key_strings(rows, keys, hist.key[mask])
        rows.ints([hist.kind[mask]], 2)
        rows.ints([hist.bin_lo[mask]], 4)
        rows.varbytes(hist.lanes, hist.offset[mask], hist.length[mask])
        return rows.data()

    def _tuples(self, closed: Closed) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        agents, sources, models = self._names
        counters: list[tuple[Any, ...]] = []
        keys = self._rollups.keys
        for grain, g in closed.counters:
            for bucket, key, values in zip(
                g.bucket.tolist(), g.key.tolist(), g.values.tolist(), strict=True
            ):
                names = agents[keys.agent[key]], sources[keys.source[key]], models[keys.model[key]]
                counters.append((grain, bucket, int(keys.series[key]), *names, *values, values[0]))
        hist: list[tuple[Any, ...]] = []
        keys = self._rollups.hist_keys
        for grain, h in closed.histograms:
            for i, (bucket, key) in enumerate(zip(h.bucket.tolist(), h.key.tolist(), strict=True)):
                names = agents[keys.agent[key]], sources[keys.source[key]], models[keys.model[key]]
                at, size = int(h.offset[i]), int(h.length[i])
                counts = h.lanes[at : at + size]
                hist.append(
                    (
                        grain,
                        bucket,
                        int(keys.series[key]),
                        *names,
                        int(h.kind[i]),
                        int(h.bin_lo[i]),
                        counts,
                    )
                )
        return counters, hist

    async def write(self, session: AsyncSession) -> None:
        """Store every row in the (empty) rollup tables, sorted as `rebuild_rollups`
        writes them, the primary keys built afterwards on PostgreSQL; count it as a
        rebuild."""
        lock = dialect_of(session).advisory_xact_lock_sql(FOLD_LOCK_KEY)
        if lock is not None:
            await session.execute(lock)
        await dialect_of(session).lock_tables_exclusive(
            session, [_ROLLUPS.name, _HIST.name, _PENDING.name]
        )
        if self._binary:
            await self._copy(session)
        else:
            await _write_stages(session)
        # As a rebuild does: `changes` restarted from the blocks' tasks.
        await dialect_of(session).upsert_add_many(session, _STATE, ["id"], ["rebuilds"], [(1, 1)])
        await dialect_of(session).analyze_tables(session, [_ROLLUPS.name, _HIST.name])

    async def _copy(self, session: AsyncSession) -> None:
        dialect = dialect_of(session)
        try:
            for table, columns in ((_ROLLUPS, ROLLUP_COLUMNS), (_HIST, HIST_COLUMNS)):
                dropped = await dialect.drop_primary_key(session, table)
                files = [f for (name, *_), f in sorted(self._files.items()) if name == table.name]
                await copy_binary(session, table.name, columns, _stream(files))
                if dropped:
                    await dialect.add_primary_key(session, table)
        finally:
            for f in self._files.values():
                f.close()
            self._files = {}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def _stream(files: list[IO[bytes]]) -> Iterator[bytes]:
    yield pgcopy.HEADER
    for f in files:
        f.seek(0)
        while chunk := f.read(_READ):
            yield chunk
    yield pgcopy.TRAILER


def _stage(target: Table) -> Table:
    return Table(f"streamed_{target.name}", MetaData(), *(Column(c.name, c.type) for c in target.c))


_STAGES = (_stage(_ROLLUPS), _stage(_HIST))


async def _open_stages(session: AsyncSession) -> None:
    """Temporary tables (unindexed) that take the rows."""
    for stage, target in zip(_STAGES, (_ROLLUPS, _HIST), strict=True):
        await session.execute(text(f'DROP TABLE IF EXISTS "{stage.name}"'))
        like = f'SELECT * FROM "{target.name}" WHERE 1 = 0'  # noqa: S608 - our names
        await session.execute(text(f'CREATE TEMPORARY TABLE "{stage.name}" AS {like}'))


async def _write_stages(session: AsyncSession) -> None:
    rollups, hist = _STAGES
    columns = ", ".join(f'"{c}"' for c in ROLLUP_COLUMNS)
    await session.execute(
        text(
            f'INSERT INTO "{_ROLLUPS.name}" ({columns}) SELECT {columns} '  # noqa: S608
            f'FROM "{rollups.name}" ORDER BY series, grain, bucket'
        )
    )
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
