"""analytics: one histogram row per block, group and kind, with its bins packed

Revision ID: 0008_analytics_packed_histograms
Revises: 0006_analytics_marginals
Create Date: 2026-11-26 00:10:00.000000

`analytics_histograms` held one row per bin (6.9 M rows at 1M tasks; a 30-day percentile
query summed ~62,000 of them). It now holds one row per (series, grain, bucket,
agent_type, source, model, kind): `counts` has the counts of bins `bin_lo`, `bin_lo + 1`,
... as little-endian signed 64-bit integers (bytea / BLOB), zero bins at either end left
out.

The data is converted, not rebuilt from the raw tasks: the old rows are streamed in key
order (the primary key's order, so no sort; a server-side cursor, so memory stays flat
whatever the table holds), packed here and inserted in batches. Converting keeps exactly
what the rollups held (a rebuild from tasks would need the log-bin function in SQL on
both backends, and gives the same answer only if the rollups were right), and it is the
same Python on both backends. Measured on the 1M-task benchmark database: see
bench/README.md (analytics). The downgrade unpacks the same way.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008_analytics_packed_histograms"
down_revision: str | Sequence[str] | None = "0006_analytics_marginals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "analytics_histograms"
_OLD = "analytics_histograms_by_bin"
_KEY = ("series", "grain", "bucket", "agent_type", "source", "model", "kind")
_BATCH = 10_000


def _key_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("series", sa.SmallInteger(), nullable=False),
        sa.Column("grain", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("agent_type", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
    ]


def _packed_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        *_key_columns(),
        sa.Column("bin_lo", sa.Integer(), nullable=False),
        sa.Column("counts", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint(*_KEY, name=f"pk_{name}"),
    )


def _by_bin_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        *_key_columns(),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*_KEY, "bin", name=f"pk_{name}"),
    )


def _le(values: array[int]) -> array[int]:
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    return values


def _pack(bins: list[tuple[int, int]]) -> tuple[int, bytes]:
    lo, hi = bins[0][0], bins[-1][0]
    values = array("q", bytes(8 * (hi - lo + 1)))
    for index, count in bins:
        values[index - lo] = count
    return lo, _le(values).tobytes()


def _pages(bind: sa.Connection, table: sa.Table, key: Sequence[str]) -> Iterator[Any]:
    """Every row of `table` in the order of its primary key `key`, read page by page
    after the last key seen (each page one index range; no cursor is left open, which
    would keep the table from being dropped in this transaction on PostgreSQL)."""
    key_cols = [table.c[k] for k in key]
    stmt = sa.select(table).order_by(*key_cols).limit(_BATCH)
    last: tuple[Any, ...] | None = None
    while True:
        page = stmt if last is None else stmt.where(sa.tuple_(*key_cols) > sa.tuple_(*last))
        rows = bind.execute(page).all()
        yield from rows
        if len(rows) < _BATCH:
            return
        last = tuple(rows[-1]._mapping[k] for k in key)


def _insert_batches(bind: sa.Connection, table: sa.Table, rows: Iterable[dict[str, Any]]) -> None:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _BATCH:
            bind.execute(table.insert(), batch)
            batch = []
    if batch:
        bind.execute(table.insert(), batch)


def _rename(old: str, new: str) -> None:
    op.rename_table(old, new)
    if op.get_bind().dialect.name == "postgresql":
        # The primary key's name (and its index's) is unique per schema there.
        op.execute(f'ALTER TABLE "{new}" RENAME CONSTRAINT "pk_{old}" TO "pk_{new}"')


def _analyze(table: str) -> None:
    # Without statistics (a new table has none until autovacuum comes by) PostgreSQL took
    # a filtered 30-day read for 10 rows and scanned 39,000 instead of 950: 50 ms, not 5.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'ANALYZE "{table}"')


def upgrade() -> None:
    bind = op.get_bind()
    _rename(_TABLE, _OLD)
    old = _by_bin_table(_OLD)
    new = _packed_table(_TABLE)
    new.create(bind)

    def packed() -> Iterator[dict[str, Any]]:
        key: tuple[Any, ...] | None = None
        bins: list[tuple[int, int]] = []
        for *k, index, count in _pages(bind, old, (*_KEY, "bin")):
            if not count:
                continue
            if tuple(k) != key:
                if key is not None:
                    yield _row(key, bins)
                key, bins = tuple(k), []
            bins.append((index, count))
        if key is not None:
            yield _row(key, bins)

    def _row(key: tuple[Any, ...], bins: list[tuple[int, int]]) -> dict[str, Any]:
        bin_lo, counts = _pack(bins)
        return {**dict(zip(_KEY, key, strict=True)), "bin_lo": bin_lo, "counts": counts}

    _insert_batches(bind, new, packed())
    op.drop_table(_OLD)
    _analyze(_TABLE)


def downgrade() -> None:
    bind = op.get_bind()
    _rename(_TABLE, _OLD)
    old = _packed_table(_OLD)
    new = _by_bin_table(_TABLE)
    new.create(bind)

    def unpacked() -> Iterator[dict[str, Any]]:
        for *key, bin_lo, counts in _pages(bind, old, _KEY):
            base = dict(zip(_KEY, key, strict=True))
            for i, count in enumerate(_le(array("q", bytes(counts)))):
                if count:
                    yield {**base, "bin": bin_lo + i, "count": count}

    _insert_batches(bind, new, unpacked())
    op.drop_table(_OLD)
    _analyze(_TABLE)
