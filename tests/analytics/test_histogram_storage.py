"""Packed histogram rows: concurrent writers neither lose a delta nor deadlock, and
migration 0008 converts one-row-per-bin histograms both ways, on both backends."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from alembic import command
from sqlalchemy import text

from dashboard_api.db.engine import Database
from dashboard_api.db.migrate import alembic_config
from dashboard_api.services.analytics.layout import HIST_GRAINS
from dashboard_api.services.analytics.rebuild import rollup_rows
from dashboard_api.services.analytics.rollups import add_histogram_deltas
from dashboard_api.settings import Settings
from tests.analytics.conftest import in_thread

Row = tuple[Any, ...]


def _sum(rows: list[Row]) -> list[Row]:
    """(*key, bin, count) rows summed per (key, bin), zeros dropped, sorted."""
    acc: dict[Row, int] = {}
    for *key, n in rows:
        acc[tuple(key)] = acc.get(tuple(key), 0) + n
    return sorted((*k, n) for k, n in acc.items() if n)


def _hrows(rng: random.Random, n: int) -> list[Row]:
    """Delta rows over a small key space (so that writers collide), sorted like
    `task_deltas` sorts them."""
    out: dict[Row, int] = {}
    for _ in range(n):
        grain = rng.choice(HIST_GRAINS[:2])
        key = (
            grain,
            grain * rng.randint(0, 1),
            rng.randint(0, 3),
            rng.choice(("coder", "reviewer", "")),
            rng.choice(("api", "")),
            rng.choice(("", "gpt-5")),
            rng.randint(0, 1),
            rng.randint(300, 330),
        )
        out[key] = out.get(key, 0) + rng.choice((-1, 1, 1, 2))
    return sorted((*k, v) for k, v in out.items() if v)


async def test_concurrent_writers_lose_nothing(settings: Settings) -> None:
    rng = random.Random(4)
    batches = [_hrows(rng, rng.randint(1, 30)) for _ in range(40)]
    db = Database(settings.database_url)
    try:

        async def writer(rows: list[Row], pause: float) -> None:
            async with db.write() as session:
                await asyncio.sleep(pause)
                await add_histogram_deltas(session, rows)
                # Hold the row locks a while, so that other writers queue on them.
                await asyncio.sleep(pause)

        # All start on an empty table: most keys are created by several writers at once.
        await asyncio.gather(*(writer(b, rng.random() * 0.02) for b in batches))
        async with db.read() as session:
            _, got = await rollup_rows(session)
    finally:
        await db.dispose()
    assert got == _sum([r for b in batches for r in b])


# --- migration 0008 ------------------------------------------------------------------------

BEFORE = "0006_analytics_marginals"
PACKED = "0008_analytics_packed_histograms"
PACKED = "0008_analytics_packed_histograms"
_COLUMNS = "series, grain, bucket, agent_type, source, model, kind, bin, count"


def _old_rows(rng: random.Random, n: int) -> list[Row]:
    """Rows of the one-row-per-bin table (its column order), zero and negative counts
    included, more than one page of the conversion."""
    rows: dict[Row, int] = {}
    while len(rows) < n:
        grain = rng.choice(HIST_GRAINS)
        key = (
            rng.randint(0, 3),
            grain,
            grain * rng.randint(0, 40),
            rng.choice(("coder", "reviewer", "triage", "")),
            rng.choice(("api", "slack", "")),
            rng.choice(("", "gpt-5", "claude-sonnet-4")),
            rng.randint(0, 1),
            rng.randint(0, 1150),
        )
        rows[key] = rng.choice((0, -2, 1, 7, 123456789, 2**40))
    return [(*k, v) for k, v in rows.items()]


async def _insert_old(url: str, rows: list[Row]) -> None:
    db = Database(url)
    try:
        async with db.write() as session:
            params = [dict(zip(_COLUMNS.split(", "), r, strict=True)) for r in rows]
            values = ", ".join(f":{c}" for c in _COLUMNS.split(", "))
            await session.execute(
                text(f"INSERT INTO analytics_histograms ({_COLUMNS}) VALUES ({values})"),  # noqa: S608 - constants
                params,
            )
    finally:
        await db.dispose()


async def _read_old(url: str) -> list[Row]:
    db = Database(url)
    try:
        async with db.read() as session:
            sql = f"SELECT {_COLUMNS} FROM analytics_histograms"  # noqa: S608 - constants
            result = await session.execute(text(sql))
            return sorted(tuple(r) for r in result)
    finally:
        await db.dispose()


async def _read_packed(url: str) -> tuple[list[Row], int]:
    db = Database(url)
    try:
        async with db.read() as session:
            _, hrows = await rollup_rows(session)
            stored = await session.scalar(text("SELECT count(*) FROM analytics_histograms"))
    finally:
        await db.dispose()
    return hrows, int(stored or 0)


async def test_migration_0008_converts_both_ways(empty_url: str) -> None:
    cfg = alembic_config(empty_url)
    in_thread(command.upgrade, cfg, BEFORE)
    old = _old_rows(random.Random(8), 21_000)
    await _insert_old(empty_url, old)

    # To 0008 alone: 0020 (which depends on it) rebuilds the 1-hour rows from the tasks.
    in_thread(command.upgrade, cfg, PACKED)
    hrows, stored = await _read_packed(empty_url)
    # The logical content is unchanged (zero bins dropped), in one row per key.
    grain_first = [(r[1], r[2], r[0], *r[3:]) for r in old if r[-1]]
    assert hrows == sorted(grain_first)
    assert stored == len({r[:7] for r in old if r[-1]})

    # Writes keep working on converted rows.
    delta = [(*hrows[0][:-1], 5), (*hrows[0][:-2], 1151, -1)]
    db = Database(empty_url)
    try:
        async with db.write() as session:
            await add_histogram_deltas(session, delta)
    finally:
        await db.dispose()
    after, _ = await _read_packed(empty_url)
    assert after == _sum([*hrows, *delta])

    in_thread(command.downgrade, cfg, BEFORE)
    back = await _read_old(empty_url)
    assert back == sorted((r[2], r[0], r[1], *r[3:]) for r in after)
