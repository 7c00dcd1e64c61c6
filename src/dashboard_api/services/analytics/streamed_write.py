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

from collections.abc import Awaitable, Callable, Iterator
from itertools import repeat
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy import Column, MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db import pgcopy
from dashboard_api.db.bulk import copy_binary, insert_driver_rows
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models.analytics import (
    HISTOGRAMS_TABLE,
    PENDING_TABLE,
    ROLLUPS_TABLE,
    STATE_TABLE,
)
from dashboard_api.services.analytics.layout import (
    FOLD_LOCK_KEY,
    HIST_ROW_KEY,
    HIST_VALUES,
    KEY_COLUMNS,
    ROLLUP_VALUES,
)
from dashboard_api.services.analytics.streamed import Closed, Groups, HistRows, Keys, RollupArrays

_ROLLUPS = ROLLUPS_TABLE
_HIST = HISTOGRAMS_TABLE
_PENDING = PENDING_TABLE
_STATE = STATE_TABLE
ROLLUP_COLUMNS = (*KEY_COLUMNS, *ROLLUP_VALUES)
HIST_COLUMNS = (*HIST_ROW_KEY, *HIST_VALUES)
_READ = 1 << 20


class RollupSink:
    """Where the closed rows go until they are stored. PostgreSQL (`binary`): encoded as
    COPY data into spill files in `directory` (`spilled`, then `write_spilled`); SQLite:
    tuples in storage form (integers, text, bytes) for temporary tables (`open`, `put`,
    `write`)."""

    def __init__(
        self, rollups: RollupArrays, *, binary: bool, directory: str | None = None
    ) -> None:
        self._binary = binary
        self._directory = directory
        self.rollups = rollups
        names = rollups.names
        self._strings = [pgcopy.Strings([*values, ""]) for values in names]  # -1: ''
        self._name_arrays = [np.array([*values, ""], dtype=object) for values in names]
        self._files: dict[tuple[str, int, int], IO[bytes]] = {}

    async def open(self, session: AsyncSession) -> None:
        if not self._binary:
            await _open_stages(session)

    def encode(self, closed: Closed) -> Any:
        """What `put` takes for these rows (PostgreSQL: encoded and spilled right here,
        off the event loop's thread)."""
        if not self._binary:
            return self._tuples(closed)
        keys = self.rollups.keys
        for grain, groups in closed.counters:
            for series in np.unique(keys.series[groups.key]).tolist():
                part = groups.where(keys.series[groups.key] == series)
                self._spill(_ROLLUPS.name, series, grain, self._counter_rows(grain, part))
        hist_keys = self.rollups.hist_keys
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
            await insert_driver_rows(session, _STAGES[0].name, ROLLUP_COLUMNS, rollups)
            await insert_driver_rows(session, _STAGES[1].name, HIST_COLUMNS, hist)

    def _spill(self, table: str, series: int, grain: int, data: bytes) -> None:
        key = (table, series, grain)
        out = self._files.get(key)
        if out is None:
            assert self._directory is not None
            path = Path(self._directory) / f"{table}-{series:03d}-{grain:010d}"
            out = self._files[key] = path.open("wb")
        out.write(data)

    def spilled(self) -> list[tuple[str, str]]:
        """(table, file) of every spill file, in the order to copy them (closed)."""
        out = [(key[0], f.name) for key, f in sorted(self._files.items())]
        self.close()
        return out

    def _key_strings(self, rows: Any, keys: Keys, key: Any) -> None:
        rows.strings(self._strings[0], keys.agent[key])
        rows.strings(self._strings[1], keys.source[key])
        rows.strings(self._strings[2], keys.model[key])

    def _counter_rows(self, grain: int, groups: Groups) -> bytes:
        n = len(groups)
        rows = pgcopy.Rows(n, len(ROLLUP_COLUMNS))
        rows.ints([np.full(n, grain)], 4)
        rows.ints([groups.bucket], 8)
        rows.ints([self.rollups.keys.series[groups.key]], 2)
        self._key_strings(rows, self.rollups.keys, groups.key)
        values = groups.values
        rows.ints([*(values[:, i] for i in range(values.shape[1])), values[:, 0]], 8)
        return rows.data()

    def _hist_rows(self, grain: int, hist: HistRows, mask: Any) -> bytes:
        n = int(mask.sum())
        keys = self.rollups.hist_keys
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
        """The rows as tuples, made column by column (a Python loop per row cost more
        than the rest of a SQLite seed's rollups)."""
        counters: list[tuple[Any, ...]] = []
        for grain, g in closed.counters:
            if not len(g):
                continue
            values = g.values.T.tolist()
            counters += zip(
                repeat(grain),
                g.bucket.tolist(),
                *self._key_columns(self.rollups.keys, g.key),
                *values,
                values[0],  # changes: the tasks
                strict=False,  # the grain repeats
            )
        hist: list[tuple[Any, ...]] = []
        for grain, h in closed.histograms:
            lanes = h.lanes
            counts = [
                lanes[at : at + size]
                for at, size in zip(h.offset.tolist(), h.length.tolist(), strict=True)
            ]
            hist += zip(
                repeat(grain),
                h.bucket.tolist(),
                *self._key_columns(self.rollups.hist_keys, h.key),
                h.kind.tolist(),
                h.bin_lo.tolist(),
                counts,
                strict=False,  # the grain repeats
            )
        return counters, hist

    def _key_columns(self, keys: Keys, key: Any) -> list[list[Any]]:
        """series, agent_type, source, model of each row's key."""
        agents, sources, models = self._name_arrays
        return [
            keys.series[key].tolist(),
            agents[keys.agent[key]].tolist(),
            sources[keys.source[key]].tolist(),
            models[keys.model[key]].tolist(),
        ]

    async def write(self, session: AsyncSession) -> None:
        """SQLite: store the staged rows (`write_spilled` on PostgreSQL)."""
        await _store(session, lambda: _write_stages(session))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


async def write_spilled(session: AsyncSession, files: list[tuple[str, str]]) -> None:
    """Store the spilled rows (`RollupSink.spilled`) in the (empty) rollup tables, in
    the order `rebuild_rollups` writes them, the primary keys built afterwards."""
    await _store(session, lambda: _copy(session, files))


async def _store(session: AsyncSession, writes: Callable[[], Awaitable[None]]) -> None:
    """Run `writes` as a rebuild runs: under the fold lock, the rollup tables held, and
    counted as a rebuild."""
    lock = dialect_of(session).advisory_xact_lock_sql(FOLD_LOCK_KEY)
    if lock is not None:
        await session.execute(lock)
    await dialect_of(session).lock_tables_exclusive(
        session, [_ROLLUPS.name, _HIST.name, _PENDING.name]
    )
    await writes()
    # As a rebuild does: `changes` restarted from the blocks' tasks.
    await dialect_of(session).upsert_add_many(session, _STATE, ["id"], ["rebuilds"], [(1, 1)])
    await dialect_of(session).analyze_tables(session, [_ROLLUPS.name, _HIST.name])


async def _copy(session: AsyncSession, files: list[tuple[str, str]]) -> None:
    dialect = dialect_of(session)
    for table, columns in ((_ROLLUPS, ROLLUP_COLUMNS), (_HIST, HIST_COLUMNS)):
        dropped = await dialect.drop_primary_key(session, table)
        paths = [path for name, path in files if name == table.name]
        await copy_binary(session, table.name, columns, _stream(paths))
        if dropped:
            await dialect.add_primary_key(session, table)


def _stream(paths: list[str]) -> Iterator[bytes]:
    yield pgcopy.HEADER
    for path in paths:
        with Path(path).open("rb") as f:
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
